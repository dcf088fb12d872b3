package locktest

// Watch.

import (
	"context"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// nextEvent returns the next event, failing the test after a long while.
func (e *env) nextEvent(ch <-chan lmx.Event) lmx.Event {
	e.Helper()
	select {
	case ev, ok := <-ch:
		require.True(e, ok, "the watch channel closed")
		return ev
	case <-time.After(400 * e.unit):
		e.Fatal("no event in time")
		return lmx.Event{}
	}
}

func testWatch(e *env) {
	e.needAdmin()
	ctx, cancel := context.WithCancel(e.Context())
	ch, err := need[lmx.Watcher](e).Watch(ctx, "w/")
	require.NoError(e, err)

	l := e.lock("w/a", lmx.Owner("alice"))
	e.lock("other/a").Unlock(e.Context()) // not under the prefix
	e.unlock(l)
	x := e.lock("w/x", lmx.TTL(4*e.unit))
	e.waitDone(x, 400*e.unit)
	f := e.lock("w/f")
	require.NoError(e, e.admin.ForceUnlock(e.Context(), "w/f"))

	want := []struct {
		t   lmx.EventType
		key string
		l   *lmx.Lease
	}{
		{lmx.EventAcquired, "w/a", l}, {lmx.EventReleased, "w/a", l},
		{lmx.EventAcquired, "w/x", x}, {lmx.EventExpired, "w/x", x},
		{lmx.EventAcquired, "w/f", f}, {lmx.EventForced, "w/f", f},
	}
	for _, w := range want {
		ev := e.nextEvent(ch)
		require.Equal(e, w.t, ev.Type, "event %+v", ev)
		assert.Equal(e, w.key, ev.Key)
		assert.Equal(e, w.l.ID(), ev.ID)
		assert.Equal(e, w.l.Token(), ev.Token)
		assert.False(e, ev.Time.IsZero())
	}
	cancel()
	for range ch { // closes once the watch is cancelled
	}
}

// A watcher that does not read misses events instead of slowing the table,
// and learns how many it missed: every event is delivered or counted.
func testWatchLagged(e *env) {
	ch, err := need[lmx.Watcher](e).Watch(e.Context(), "lag/")
	require.NoError(e, err)
	const cycles = 2 * lmx.DefaultWatchBuffer
	for range cycles {
		e.unlock(e.lock("lag/k"))
	}
	e.settle()
	var delivered, missed uint64
	count := func(ev lmx.Event) {
		if ev.Type == lmx.EventLagged {
			missed += ev.Missed
		} else if ev.Key == "lag/k" {
			delivered++
		}
	}
	for drained := false; !drained; {
		select {
		case ev := <-ch:
			count(ev)
		default:
			drained = true
		}
	}
	marker := e.lock("lag/marker")
	e.unlock(marker)
	for {
		ev := e.nextEvent(ch)
		count(ev)
		if ev.Type == lmx.EventReleased && ev.Key == "lag/marker" {
			break
		}
	}
	assert.NotZero(e, missed, "nothing was missed: the buffer is unbounded?")
	assert.Equal(e, uint64(2*cycles), delivered+missed, "events lost without being counted")
}
