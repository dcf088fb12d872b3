package chaos

import (
	"context"
	"slices"
	"time"
)

// Stalls: on a loaded machine a worker or the broker may get no CPU for
// longer than the session timeout, and the broker then rightly drops a
// session whose client was alive. On a clean key that looks like a
// double grant: the holder of the lost session is still inside when the
// next holder enters. Every worker and the broker therefore watch their
// own process for stalls and report them to the checker, which excuses
// such an overlap only when the stalls explain the lost session (see
// starved), and counts it apart. A broker that drops a session nothing
// stalled stays a clean-overlap violation.

// The stall watch wakes every stallTick and reports a wake-up later than
// stallMin. brokerName is the broker's (or server's) name in the reports.
const (
	stallTick  = 10 * time.Millisecond
	stallMin   = 20 * time.Millisecond
	brokerName = "broker"
)

// watchStalls reports this process's stalls to the checker at path, as
// who, until ctx ends. An error is the checker's line failing.
func watchStalls(ctx context.Context, path, who string) error {
	r, err := dialChecker(path, who)
	if err != nil {
		return err
	}
	defer r.close()
	for ctx.Err() == nil {
		start := time.Now()
		time.Sleep(stallTick)
		end := time.Now()
		if late := end.Sub(start) - stallTick; late >= stallMin {
			if err := r.stalled(end, late); err != nil {
				return err
			}
		}
	}
	return nil
}

// An interval is a stall, from its start to its end.
type interval struct{ from, to time.Time }

// Stalled records that none of who's goroutines ran for d, up to end; who
// is a worker's name, or "broker" for the broker or server.
func (c *Checker) Stalled(who string, end time.Time, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stalls[who] = append(c.stalls[who], interval{end.Add(-d), end})
}

// starved reports whether h's session was lost while its worker, the
// broker, or both by turns, were stalled for half the session timeout or
// more, from a timeout before h entered to its outcome. The broker drops a
// session it has not heard from for the timeout; every client sends
// something at least every half of it (the broker's heartbeat is a fifth,
// Redis's and etcd's renewals a third), so a live session goes that silent
// only if its worker or the broker stopped for at least half of it.
func (c *Checker) starved(h *holder) bool {
	if h.outcome != Lost {
		return false
	}
	from, to := h.entered.Add(-c.timeout), h.ended
	var in []interval
	for _, who := range []string{h.worker, brokerName} {
		for _, s := range c.stalls[who] {
			s.from, s.to = latest(s.from, from), earliest(s.to, to)
			if s.from.Before(s.to) {
				in = append(in, s)
			}
		}
	}
	return union(in) >= c.timeout/2
}

// union returns how long the intervals cover, counting once what more
// than one of them covers. It sorts in.
func union(in []interval) time.Duration {
	slices.SortFunc(in, func(a, b interval) int { return a.from.Compare(b.from) })
	var total time.Duration
	var cur interval
	for _, s := range in {
		if s.from.After(cur.to) {
			total += cur.to.Sub(cur.from)
			cur = s
		} else {
			cur.to = latest(cur.to, s.to)
		}
	}
	return total + cur.to.Sub(cur.from)
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
