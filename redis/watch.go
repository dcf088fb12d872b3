package redis

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/oklog/ulid/v2"
	goredis "github.com/redis/go-redis/v9"
)

var _ lmx.Watcher = (*Locker)(nil)

// eventTypes maps the scripts' names of events to their types.
var eventTypes = map[string]lmx.EventType{
	"a": lmx.EventAcquired, "r": lmx.EventReleased, "x": lmx.EventExpired,
	"f": lmx.EventForced, "s": lmx.EventSessionLost, "p": lmx.EventPreempted,
}

// Watch streams the events of keys starting with prefix, from every Locker
// on the same Redis prefix, until ctx ends or the Locker closes; then it
// closes the channel. The events come from Redis pub/sub, on a connection
// of the watch's own: Time is Redis's clock, Owner is never set. A watcher
// that falls lmx.DefaultWatchBuffer events behind misses the next ones and
// gets an lmx.EventLagged that counts them. Pub/sub delivers at most once:
// when the watch's connection is lost and made anew, the events meanwhile
// are lost uncounted, and the watch delivers an lmx.EventLagged with Missed
// 0 to say so.
func (lk *Locker) Watch(ctx context.Context, prefix string) (<-chan lmx.Event, error) {
	lk.mu.Lock()
	closed := lk.closed
	lk.mu.Unlock()
	if closed {
		return nil, lmx.ErrClosed
	}
	ps := lk.rdb.Subscribe(ctx, lk.pfx+"e")
	if _, err := ps.Receive(ctx); err != nil {
		ps.Close()
		return nil, lk.wrap(ctx, fmt.Errorf("watch: %w", err))
	}
	ch := make(chan lmx.Event, lmx.DefaultWatchBuffer)
	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(lk.ctx, cancel)
	lk.wg.Go(func() {
		defer close(ch)
		defer stop()
		defer cancel()
		defer ps.Close()
		var missed uint64
		send := func(ev lmx.Event) {
			if missed > 0 {
				select {
				case ch <- lmx.Event{Type: lmx.EventLagged, Time: ev.Time, Missed: missed}:
					missed = 0
				default:
					missed++
					return
				}
			}
			select {
			case ch <- ev:
			default:
				missed++
			}
		}
		receive(wctx, ps, func(m any) {
			switch m := m.(type) {
			case *goredis.Message:
				if ev, ok := parseEvent(m.Payload); ok && strings.HasPrefix(ev.Key, prefix) {
					send(ev)
				}
			case *goredis.Subscription: // subscribed again: events were lost
				select {
				case ch <- lmx.Event{Type: lmx.EventLagged, Time: time.Now()}:
				default:
				}
			}
		})
	})
	return ch, nil
}

// parseEvent reads an event message, "what|id|token|ms|key".
func parseEvent(msg string) (lmx.Event, bool) {
	f := strings.SplitN(msg, "|", 5)
	if len(f) != 5 {
		return lmx.Event{}, false
	}
	t, ok := eventTypes[f[0]]
	id, err1 := ulid.ParseStrict(f[1])
	tok, err2 := strconv.ParseUint(f[2], 10, 64)
	ms, err3 := strconv.ParseInt(f[3], 10, 64)
	if !ok || err1 != nil || err2 != nil || err3 != nil {
		return lmx.Event{}, false
	}
	return lmx.Event{Type: t, Key: f[4], ID: id, Token: tok, Time: time.UnixMilli(ms)}, true
}
