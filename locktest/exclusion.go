package locktest

// Exclusion and cancellation: one holder at a time, FIFO, no barging, a
// cancelled wait leaves nothing held; bad input and Close.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func testLockUnlock(e *env) {
	l := e.lock("a")
	assert.Equal(e, "a", l.Key())
	assert.NotZero(e, l.ID())
	assert.NotZero(e, l.Token())
	assert.True(e, l.Expires().IsZero(), "a lease without TTL has no expiry")
	e.assertHeld(l)

	e.unlock(l)
	select {
	case <-l.Done():
	default:
		e.Fatal("Done not closed after Unlock")
	}
	assert.ErrorIs(e, l.Err(), lmx.ErrReleased)
	assert.NotErrorIs(e, l.Err(), lmx.ErrLeaseLost)

	err := l.Unlock(e.Context())
	assert.ErrorIs(e, err, lmx.ErrNotHeld, "double unlock must not pass unnoticed")
	assert.ErrorIs(e, err, lmx.ErrReleased)
	assert.ErrorIs(e, l.Extend(e.Context(), e.unit), lmx.ErrNotHeld)
	e.assertFree("a")
}

func testTryLock(e *env) {
	l := e.lock("a")
	_, err := e.l.TryLock(e.Context(), "a")
	require.ErrorIs(e, err, lmx.ErrLocked)

	ctx, cancel := context.WithTimeout(e.Context(), e.unit)
	defer cancel()
	_, err = e.l.Lock(ctx, "a")
	require.ErrorIs(e, err, context.DeadlineExceeded)
	require.Equal(e, ctx.Err(), err, "a wait cut short returns ctx.Err() itself")

	e.assertFree("b")
	e.unlock(l)
	e.assertFree("a")
}

func testMutualExclusion(e *env) {
	const workers, rounds = 8, 100
	var inside, overlaps, total atomic.Int64
	errs := make(chan error, workers)
	for range workers {
		go func() {
			for range rounds {
				l, err := e.l.Lock(e.Context(), "hot")
				if err != nil {
					errs <- err
					return
				}
				if inside.Add(1) != 1 {
					overlaps.Add(1)
				}
				total.Add(1)
				inside.Add(-1)
				if err := l.Unlock(e.Context()); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	e.waitWorkers(errs, workers, "workers did not finish")
	assert.Zero(e, overlaps.Load(), "two holders inside at once")
	assert.Equal(e, int64(workers*rounds), total.Load())
	e.assertFree("hot")
}

func testFIFO(e *env) {
	e.needAdmin()
	holder := e.lock("q")
	ch := make(chan result, 5)
	for i := range 5 {
		e.lockAsync(e.Context(), ch, fmt.Sprint(i), "q")
		e.waitQueued("q", i+1)
	}
	e.unlock(holder)
	for i := range 5 {
		r := e.recv(ch)
		require.NoError(e, r.err)
		require.Equal(e, fmt.Sprint(i), r.name, "waiters granted out of arrival order")
		e.none(ch)
		e.unlock(r.lease)
	}
}

func testNoBarging(e *env) {
	e.needAdmin()
	reader := e.lock("rw", lmx.Shared())
	ch := make(chan result, 2)
	e.lockAsync(e.Context(), ch, "writer", "rw")
	e.waitQueued("rw", 1)

	// A reader could share with the present reader, but not without
	// overtaking the queued writer.
	e.assertLocked("rw", lmx.Shared())
	e.lockAsync(e.Context(), ch, "reader2", "rw", lmx.Shared())
	e.waitQueued("rw", 2)
	e.none(ch)

	e.unlock(reader)
	w := e.recv(ch)
	require.NoError(e, w.err)
	require.Equal(e, "writer", w.name)
	e.none(ch)
	e.unlock(w.lease)
	r := e.recv(ch)
	require.NoError(e, r.err)
	e.unlock(r.lease)
}

func testCancel(e *env) {
	e.needAdmin()
	holder := e.lock("c")
	ctx, cancel := context.WithCancel(e.Context())
	ch := make(chan result, 1)
	e.lockAsync(ctx, ch, "w", "c")
	e.waitQueued("c", 1)
	cancel()
	r := e.recv(ch)
	require.ErrorIs(e, r.err, context.Canceled)
	require.Nil(e, r.lease)
	e.waitQueued("c", 0)
	e.unlock(holder)
	e.assertFree("c")
}

func testCancelBefore(e *env) {
	ctx, cancel := context.WithCancel(e.Context())
	cancel()
	l, err := e.l.Lock(ctx, "c")
	require.ErrorIs(e, err, context.Canceled)
	require.Nil(e, l)
	e.assertFree("c")
}

func testCancelRace(e *env) {
	const workers, rounds = 6, 60
	var wg sync.WaitGroup
	var unexpected atomic.Value
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				// Half the waits are cut short while others hand the key on,
				// so some grants race their cancellation.
				ctx, cancel := context.WithTimeout(e.Context(), time.Duration((w+i)%3)*e.unit/50)
				l, err := e.l.Lock(ctx, "race")
				cancel()
				if err != nil {
					if !errors.Is(err, context.DeadlineExceeded) {
						unexpected.Store(fmt.Errorf("%w", err))
					}
					continue
				}
				if err := l.Unlock(e.Context()); err != nil {
					unexpected.Store(fmt.Errorf("unlock: %w", err))
				}
			}
		}()
	}
	wg.Wait()
	if err := unexpected.Load(); err != nil {
		e.Fatal(err)
	}
	e.assertFree("race")
	if e.admin != nil {
		st, err := e.admin.Stats(e.Context())
		require.NoError(e, err)
		assert.Zero(e, st.Holders, "a cancelled request left a lock held")
		assert.Zero(e, st.Waiters)
	}
}

func testUnlockCancelledContext(e *env) {
	l := e.lock("u")
	ctx, cancel := context.WithCancel(e.Context())
	cancel()
	_ = l.Unlock(ctx) // may report ctx's error remotely, but must release
	select {
	case <-l.Done():
	default:
		e.Fatal("Unlock with a cancelled ctx did not end the lease")
	}
	ctx, cancel = context.WithTimeout(e.Context(), 400*e.unit)
	defer cancel()
	l2, err := e.l.Lock(ctx, "u")
	require.NoError(e, err, "the key stayed held after Unlock with a cancelled ctx")
	e.unlock(l2)
}

func testInvalidInput(e *env) {
	cases := []struct {
		name string
		key  string
		opts []lmx.LockOption
		want error
	}{
		{"empty key", "", nil, lmx.ErrInvalidKey},
		{"huge key", strings.Repeat("k", 1<<20), nil, lmx.ErrInvalidKey},
		{"Limit(0)", "k", []lmx.LockOption{lmx.Limit(0)}, lmx.ErrInvalidOption},
		{"Limit(-1)", "k", []lmx.LockOption{lmx.Limit(-1)}, lmx.ErrInvalidOption},
		{"negative TTL", "k", []lmx.LockOption{lmx.TTL(-time.Second)}, lmx.ErrInvalidOption},
		{"KeepAlive without TTL", "k", []lmx.LockOption{lmx.KeepAlive(time.Second)}, lmx.ErrInvalidOption},
		{"KeepAlive(0)", "k", []lmx.LockOption{lmx.TTL(time.Second), lmx.KeepAlive(0)}, lmx.ErrInvalidOption},
		{"KeepOnDisconnect without TTL", "k", []lmx.LockOption{lmx.KeepOnDisconnect()}, lmx.ErrInvalidOption},
	}
	for _, c := range cases {
		_, err := e.l.Lock(e.Context(), c.key, c.opts...)
		assert.ErrorIs(e, err, c.want, "Lock with %s", c.name)
		_, err = e.l.TryLock(e.Context(), c.key, c.opts...)
		assert.ErrorIs(e, err, c.want, "TryLock with %s", c.name)
	}
	e.assertFree("k")
	if e.admin != nil {
		_, err := e.admin.Inspect(e.Context(), "")
		assert.ErrorIs(e, err, lmx.ErrInvalidKey)
		st, err := e.admin.Stats(e.Context())
		require.NoError(e, err)
		assert.Zero(e, st.Keys, "a refused request left a key behind")
	}
}

func testClose(e *env) {
	e.needAdmin()
	held := e.lock("c", lmx.TTL(400*e.unit))
	ch := make(chan result, 1)
	e.lockAsync(e.Context(), ch, "w", "c")
	e.waitQueued("c", 1)
	require.NoError(e, e.l.Close())
	w := e.recv(ch)
	require.ErrorIs(e, w.err, lmx.ErrClosed)
	err := e.waitDone(held, 400*e.unit)
	require.ErrorIs(e, err, lmx.ErrLeaseLost)
	_, err = e.l.Lock(e.Context(), "c")
	require.ErrorIs(e, err, lmx.ErrClosed)
	_, err = e.l.TryLock(e.Context(), "d")
	require.ErrorIs(e, err, lmx.ErrClosed)
	require.NoError(e, e.l.Close(), "Close is idempotent")
}
