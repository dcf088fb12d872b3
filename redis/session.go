package redis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/oklog/ulid/v2"
	goredis "github.com/redis/go-redis/v9"
)

// A session is a Locker's key in Redis, refreshed while the Locker lives,
// and its pub/sub channel: what ends its leases when Redis stops hearing it,
// and how grants, revokes and expiries reach it.

// session is one session key and what hangs on it.
type session struct {
	id     string
	done   chan struct{} // closed when the session ends
	reason error         // why, set before done closes
	alive  atomic.Int64  // until when (Unix ns) Redis keeps it at least: the last refresh it answered, sent then, plus the TTL
}

// sure reports whether Redis keeps s for margin from now at least.
func (s *session) sure(margin time.Duration) bool {
	return time.Until(time.Unix(0, s.alive.Load())) >= margin
}

// err is why the session ended, as a waiter of it reports it.
func (s *session) err() error {
	if errors.Is(s.reason, lmx.ErrClosed) {
		return lmx.ErrClosed
	}
	return fmt.Errorf("%w: %w", lmx.ErrSessionLost, s.reason)
}

func (lk *Locker) channel() string { return lk.pfx + "c:" + lk.id }

// session returns the current session, starting one if need be.
func (lk *Locker) session(ctx context.Context) (*session, error) {
	lk.smu.Lock()
	defer lk.smu.Unlock()
	lk.mu.Lock()
	s, closed := lk.sess, lk.closed
	lk.mu.Unlock()
	switch {
	case closed:
		return nil, lmx.ErrClosed
	case s != nil:
		return s, nil
	}
	s = &session{id: ulid.Make().String(), done: make(chan struct{})}
	sent := time.Now()
	if err := lk.rdb.Set(ctx, lk.pfx+"s:"+s.id, lk.id, lk.ttl).Err(); err != nil {
		return nil, lk.wrap(ctx, err)
	}
	s.alive.Store(sent.Add(lk.ttl).UnixNano())
	lk.mu.Lock()
	closed = lk.closed
	if !closed {
		lk.sess = s
	}
	lk.mu.Unlock()
	if closed {
		lk.rdb.Del(context.WithoutCancel(ctx), lk.pfx+"s:"+s.id)
		return nil, lmx.ErrClosed
	}
	return s, nil
}

// refresh keeps the session alive until Close. A session whose key is
// gone (expired, or a Redis that restarted), or that it could not refresh
// for two thirds of its TTL, is lost: its leases end with
// lmx.ErrSessionLost, no later than Redis lets the key expire.
func (lk *Locker) refresh() {
	t := time.NewTicker(lk.ttl / 3)
	defer t.Stop()
	var last time.Time // when the last refresh that succeeded was sent
	var seen *session
	for {
		select {
		case <-lk.ctx.Done():
			return
		case <-t.C:
		}
		lk.mu.Lock()
		s := lk.sess
		lk.mu.Unlock()
		if s == nil {
			continue
		}
		if s != seen {
			seen, last = s, time.Now()
		}
		ctx, cancel := context.WithTimeout(lk.ctx, lk.ttl/3)
		sent := time.Now()
		ok, err := lk.rdb.PExpire(ctx, lk.pfx+"s:"+s.id, lk.ttl).Result()
		cancel()
		switch {
		case err == nil && ok:
			last = sent
			s.alive.Store(sent.Add(lk.ttl).UnixNano())
		case err == nil:
			lk.sessionLost(s, errors.New("the session key is gone"))
		case time.Since(last) >= lk.ttl*2/3:
			lk.sessionLost(s, fmt.Errorf("not refreshed for %v: %w", time.Since(last).Round(time.Millisecond), err))
		}
	}
}

// sessionLost ends s, which is no longer alive in Redis.
func (lk *Locker) sessionLost(s *session, why error) {
	lk.mu.Lock()
	if lk.sess == s {
		lk.sess = nil
	}
	lk.mu.Unlock()
	lk.endSession(s, why)
}

// endSession ends s for reason: its leases end, its waiters wake.
func (lk *Locker) endSession(s *session, reason error) {
	lk.mu.Lock()
	select {
	case <-s.done:
		lk.mu.Unlock()
		return
	default:
	}
	s.reason = reason
	close(s.done)
	var ended []*lease
	for _, l := range lk.leases {
		if l.s == s {
			ended = append(ended, l)
		}
	}
	lk.mu.Unlock()
	if errors.Is(reason, lmx.ErrClosed) {
		for _, l := range ended {
			l.lost(reason)
		}
		return
	}
	reason = fmt.Errorf("%w: %w", lmx.ErrSessionLost, reason)
	ctx, cancel := context.WithTimeout(lk.ctx, 5*time.Second)
	defer cancel()
	for _, l := range ended {
		l.lost(reason)
		// Hand the key on now rather than when a waiter looks again.
		lk.run(ctx, pokeScript, l.lease.Key(), "", "")
	}
}

// listen reads the Locker's channel until Close, on this goroutine, so
// that a grant reaches its waiter with no hop between. A subscription
// confirmed again means that the connection was lost and made anew, and
// messages maybe with it: every waiter looks again and every lease is
// checked.
func (lk *Locker) listen() {
	receive(lk.ctx, lk.ps, func(m any) {
		switch m := m.(type) {
		case *goredis.Message:
			lk.dispatch(m.Payload)
		case *goredis.Subscription:
			if m.Kind == "subscribe" {
				lk.wg.Go(lk.reconnected)
			}
		}
	})
}

// receive hands what ps reads to handle until ctx ends. A read that fails
// makes the next one connect and subscribe again; an idle connection is
// pinged, so that a dead one fails.
func receive(ctx context.Context, ps *goredis.PubSub, handle func(any)) {
	for {
		m, err := ps.ReceiveTimeout(ctx, 2*time.Second)
		if ctx.Err() != nil {
			return
		}
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			ps.Ping(pctx)
			cancel()
		case err != nil:
			select {
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		default:
			handle(m)
		}
	}
}

// dispatch acts on one message: "g|id|token|ttl|key", "e|id|why",
// "v|id" or "l|id". A grant that no Lock call waits for any more (it gave
// up while Redis did not answer) is taken back.
func (lk *Locker) dispatch(msg string) {
	f := strings.SplitN(msg, "|", 5)
	switch {
	case len(f) == 5 && f[0] == "g":
		tok, err1 := strconv.ParseUint(f[2], 10, 64)
		ms, err2 := strconv.ParseInt(f[3], 10, 64)
		lk.mu.Lock()
		w, l := lk.waiters[f[1]], lk.leases[f[1]]
		lk.mu.Unlock()
		switch {
		case w != nil && err1 == nil && err2 == nil:
			select {
			case w.granted <- grant{token: tok, ttl: time.Duration(ms) * time.Millisecond}:
			default:
			}
		case w == nil && l == nil:
			lk.abandon(f[4], f[1], "")
		}
	case len(f) == 3 && f[0] == "e":
		lk.mu.Lock()
		l := lk.leases[f[1]]
		lk.mu.Unlock()
		if l != nil {
			l.lost(reason(f[2]))
		}
	case len(f) == 2 && f[0] == "v":
		// A revoke may come before the Lock call that was granted has
		// made its lease: granted revokes that one.
		lk.mu.Lock()
		l, w := lk.leases[f[1]], lk.waiters[f[1]]
		if l == nil && w != nil {
			w.revoked = true
		}
		lk.mu.Unlock()
		if l != nil {
			l.revoke()
		}
	case len(f) == 2 && f[0] == "l":
		lk.mu.Lock()
		w := lk.waiters[f[1]]
		lk.mu.Unlock()
		if w != nil {
			select {
			case w.look <- struct{}{}:
			default:
			}
		}
	}
}

// reason is the error of a lease ended for why, as the scripts say it.
func reason(why string) error {
	switch why {
	case "x":
		return lmx.ErrExpired
	case "f":
		return lmx.ErrForced
	case "r":
		return lmx.ErrReleased
	case "p":
		return lmx.ErrPreempted
	}
	return fmt.Errorf("%w: its session expired in Redis", lmx.ErrSessionLost)
}

// reconnected makes every waiter look again and checks every lease: one
// gone from Redis ends, one with a preemption deadline is revoked.
func (lk *Locker) reconnected() {
	lk.mu.Lock()
	for _, w := range lk.waiters {
		select {
		case w.look <- struct{}{}:
		default:
		}
	}
	var ls []*lease
	for _, l := range lk.leases {
		ls = append(ls, l)
	}
	lk.mu.Unlock()
	if len(ls) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(lk.ctx, 5*time.Second)
	defer cancel()
	cmds := make([]*goredis.StringCmd, len(ls))
	_, err := lk.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, l := range ls {
			cmds[i] = p.HGet(ctx, lk.pfx+"h:"+l.lease.Key(), l.id)
		}
		return nil
	})
	if err != nil && !errors.Is(err, goredis.Nil) {
		return // the refresh tells whether the session survived
	}
	for i, l := range ls {
		rec, err := cmds[i].Result()
		switch {
		case errors.Is(err, goredis.Nil):
			// Only a lease still here is lost: one its holder took out
			// since (an Unlock under way) is gone from Redis because it
			// released it.
			if l.forget() {
				l.end(l.gone())
			}
		case err == nil:
			if h, ok := parseHolder(rec); ok && h.preempt {
				l.revoke()
			}
		}
	}
}

// wrap returns ctx.Err() itself when ctx ended, else err made an lmx error.
func (lk *Locker) wrap(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	lk.mu.Lock()
	closed := lk.closed
	lk.mu.Unlock()
	if closed {
		return lmx.ErrClosed
	}
	return fmt.Errorf("lmx/redis: %w", err)
}
