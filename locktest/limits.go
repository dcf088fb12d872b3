package locktest

// Limits and priorities: semaphores, shared holders, priority, re-entry,
// preemption and its starvation bound.

import (
	"context"
	"fmt"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func testSemaphore(e *env) {
	var held []*lmx.Lease
	for range 3 {
		l, err := e.l.TryLock(e.Context(), "sem", lmx.Limit(3))
		require.NoError(e, err)
		held = append(held, l)
	}
	e.assertLocked("sem", lmx.Limit(3))
	_, err := e.l.TryLock(e.Context(), "sem", lmx.Limit(2))
	require.ErrorIs(e, err, lmx.ErrLimitMismatch)
	_, err = e.l.Lock(e.Context(), "sem")
	require.ErrorIs(e, err, lmx.ErrLimitMismatch, "a request without Limit asks for a mutex")

	ch := make(chan result, 1)
	e.lockAsync(e.Context(), ch, "fourth", "sem", lmx.Limit(3))
	e.none(ch)
	e.unlock(held[1])
	r := e.recv(ch)
	require.NoError(e, r.err)
	for _, l := range []*lmx.Lease{held[0], held[2], r.lease} {
		e.unlock(l)
	}
	// The limit lives only as long as the key.
	e.assertFree("sem", lmx.Limit(2))
}

func testShared(e *env) {
	e.needAdmin()
	var readers []*lmx.Lease
	for range 3 {
		readers = append(readers, e.lock("rw", lmx.Shared()))
	}
	e.assertLocked("rw")
	ch := make(chan result, 3)
	e.lockAsync(e.Context(), ch, "writer", "rw")
	e.waitQueued("rw", 1)
	e.lockAsync(e.Context(), ch, "r1", "rw", lmx.Shared())
	e.lockAsync(e.Context(), ch, "r2", "rw", lmx.Shared())
	e.waitQueued("rw", 3)
	for _, r := range readers {
		e.none(ch)
		e.unlock(r)
	}
	w := e.recv(ch)
	require.Equal(e, "writer", w.name)
	require.NoError(e, w.err)
	e.none(ch)
	e.unlock(w.lease)
	// Both queued readers are granted together.
	r1, r2 := e.recv(ch), e.recv(ch)
	require.NoError(e, r1.err)
	require.NoError(e, r2.err)
	e.assertHeld(r1.lease)
	e.assertHeld(r2.lease)
	e.unlock(r1.lease)
	e.unlock(r2.lease)
	e.assertFree("rw")
}

func testPriority(e *env) {
	e.needAdmin()
	holder := e.lock("p")
	ch := make(chan result, 4)
	for i, w := range []struct {
		name string
		prio int
	}{{"a1", 1}, {"b5", 5}, {"c3", 3}, {"d5", 5}} {
		e.lockAsync(e.Context(), ch, w.name, "p", lmx.Priority(w.prio))
		e.waitQueued("p", i+1)
	}
	e.unlock(holder)
	for _, want := range []string{"b5", "d5", "c3", "a1"} {
		r := e.recv(ch)
		require.NoError(e, r.err)
		require.Equal(e, want, r.name, "granted out of priority order")
		e.unlock(r.lease)
	}
}

func testReentrant(e *env) {
	a := e.lock("re", lmx.Owner("alice"))
	a2 := e.lock("re", lmx.Owner("alice"))
	assert.Equal(e, a.ID(), a2.ID(), "re-entry returns the same lease")
	assert.Equal(e, a.Token(), a2.Token())
	e.assertLocked("re", lmx.Owner("bob"))
	e.assertLocked("re")

	e.unlock(a2)
	e.assertHeld(a)
	e.assertLocked("re", lmx.Owner("bob"))
	e.unlock(a)
	e.assertFree("re", lmx.Owner("bob"))

	r := e.lock("re", lmx.Owner("carol"), lmx.Shared())
	_, err := e.l.Lock(e.Context(), "re", lmx.Owner("carol"))
	require.ErrorIs(e, err, lmx.ErrInvalidOption, "a shared holder cannot re-enter exclusive")
	r2 := e.lock("re", lmx.Owner("carol"), lmx.Shared())
	assert.Equal(e, r.Token(), r2.Token())
	e.unlock(r)
	e.unlock(r2)
	e.assertFree("re")
}

func (e *env) assertNotRevoked(l *lmx.Lease) {
	e.Helper()
	select {
	case <-l.Revoked():
		e.Fatalf("lease of %q was revoked", l.Key())
	default:
	}
}

func testPreemptReleasedInGrace(e *env) {
	e.needAdmin()
	low := e.lock("pre", lmx.Priority(1))
	ch := make(chan result, 1)
	e.lockAsync(e.Context(), ch, "high", "pre", lmx.Priority(5), lmx.Preempt(40*e.unit))
	select {
	case <-low.Revoked():
	case <-time.After(400 * e.unit):
		e.Fatal("the holder was not asked to give way")
	}
	e.assertHeld(low) // the grace period is the holder's
	e.unlock(low)
	r := e.recv(ch)
	require.NoError(e, r.err)
	assert.Greater(e, r.lease.Token(), low.Token())
	assert.ErrorIs(e, low.Err(), lmx.ErrReleased, "a holder that gave way in time was not preempted")
	e.unlock(r.lease)
}

func testPreemptForced(e *env) {
	e.needAdmin()
	low := e.lock("pre", lmx.Priority(1), lmx.Owner("low"))
	ch := make(chan result, 1)
	start := time.Now()
	e.lockAsync(e.Context(), ch, "high", "pre", lmx.Priority(5), lmx.Preempt(8*e.unit))
	<-low.Revoked()
	err := e.waitDone(low, 400*e.unit)
	require.ErrorIs(e, err, lmx.ErrPreempted)
	require.ErrorIs(e, err, lmx.ErrLeaseLost)
	assert.GreaterOrEqual(e, time.Since(start), 8*e.unit, "preempted before the grace period")
	if e.bubble {
		assert.Equal(e, 8*e.unit, time.Since(start), "preempted after the grace period")
	}
	r := e.recv(ch)
	require.NoError(e, r.err)
	assert.Greater(e, r.lease.Token(), low.Token(), "the preempting grant needs a newer token")
	require.ErrorIs(e, low.Unlock(e.Context()), lmx.ErrPreempted)
	st, err := e.admin.Stats(e.Context())
	require.NoError(e, err)
	assert.Equal(e, uint64(1), st.Preemptions)
	e.unlock(r.lease)
}

func testPreemptRefused(e *env) {
	e.needAdmin()
	for _, c := range []struct {
		name   string
		holder []lmx.LockOption
	}{
		{"NoPreempt", []lmx.LockOption{lmx.Priority(1), lmx.NoPreempt()}},
		{"equal priority", []lmx.LockOption{lmx.Priority(5)}},
	} {
		held := e.lock("pre", c.holder...)
		ctx, cancel := context.WithTimeout(e.Context(), 20*e.unit)
		_, err := e.l.Lock(ctx, "pre", lmx.Priority(5), lmx.Preempt(e.unit))
		cancel()
		require.ErrorIs(e, err, context.DeadlineExceeded, c.name)
		e.assertNotRevoked(held)
		e.assertHeld(held)
		e.unlock(held)
	}
	_, err := e.l.Lock(e.Context(), "pre", lmx.Preempt(-e.unit))
	require.ErrorIs(e, err, lmx.ErrInvalidOption)
}

// A low-priority waiter is overtaken by at most 64 later requests of higher
// priority.
func testStarvationBound(e *env) {
	e.needAdmin()
	holder := e.lock("starve")
	ch := make(chan result, 100)
	e.lockAsync(e.Context(), ch, "low", "starve", lmx.Priority(0))
	e.waitQueued("starve", 1)
	for i := range 99 {
		e.lockAsync(e.Context(), ch, fmt.Sprint("high", i), "starve", lmx.Priority(9))
		e.waitQueued("starve", i+2)
	}
	e.unlock(holder)
	for i := 0; ; i++ {
		r := e.recv(ch)
		require.NoError(e, r.err)
		e.unlock(r.lease)
		if r.name == "low" {
			assert.Equal(e, 64, i, "the low-priority waiter was granted after %d others", i)
			break
		}
	}
	for range 99 - 64 {
		r := e.recv(ch)
		require.NoError(e, r.err)
		e.unlock(r.lease)
	}
}
