package locktest

// Multi-key locking: LockAll.

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func testLockAll(e *env) {
	m := need[lmx.MultiLocker](e)
	l, err := m.LockAll(e.Context(), []string{"m/b", "m/a", "m/b", "m/c"})
	require.NoError(e, err)
	parts := l.Parts()
	require.Len(e, parts, 3)
	tokens := map[uint64]bool{}
	for i, key := range []string{"m/a", "m/b", "m/c"} {
		assert.Equal(e, key, parts[i].Key(), "parts in canonical order")
		tokens[parts[i].Token()] = true
		e.assertLocked(key)
	}
	assert.Len(e, tokens, 3, "each key has its own token")
	assert.Equal(e, parts[0].Token(), l.Token())
	assert.Equal(e, "m/a", l.Key())

	e.unlock(l)
	require.ErrorIs(e, l.Err(), lmx.ErrReleased)
	for _, key := range []string{"m/a", "m/b", "m/c"} {
		e.assertFree(key)
	}
	require.ErrorIs(e, l.Unlock(e.Context()), lmx.ErrNotHeld)

	held := e.lock("m/b")
	_, err = m.TryLockAll(e.Context(), []string{"m/a", "m/b", "m/c"})
	require.ErrorIs(e, err, lmx.ErrLocked)
	e.assertFree("m/a") // all or none
	e.assertFree("m/c")
	e.unlock(held)

	_, err = m.LockAll(e.Context(), nil)
	require.ErrorIs(e, err, lmx.ErrInvalidKey)
}

func testLockAllWaits(e *env) {
	e.needAdmin()
	m := need[lmx.MultiLocker](e)
	held := e.lock("m/b")
	done := make(chan result, 1)
	go func() {
		l, err := m.LockAll(e.Context(), []string{"m/a", "m/b"})
		done <- result{"all", l, err}
	}()
	e.waitQueued("m/b", 1)
	e.assertLocked("m/a") // taken in order while m/b is awaited

	// A cancelled LockAll gives back what it took.
	ctx, cancel := context.WithTimeout(e.Context(), e.unit)
	defer cancel()
	_, err := m.LockAll(ctx, []string{"m/b", "m/c"})
	require.ErrorIs(e, err, context.DeadlineExceeded)
	e.assertFree("m/c")

	e.unlock(held)
	r := e.recv(done)
	require.NoError(e, r.err)
	e.unlock(r.lease)
	e.assertFree("m/a")
	e.assertFree("m/b")
}

func testLockAllPartLost(e *env) {
	e.needAdmin()
	l, err := need[lmx.MultiLocker](e).LockAll(e.Context(), []string{"p/a", "p/b", "p/c"}, lmx.TTL(400*e.unit))
	require.NoError(e, err)
	assert.Equal(e, l.Parts()[0].Expires(), l.Expires())
	require.NoError(e, e.admin.ForceUnlock(e.Context(), "p/b"))
	err = e.waitDone(l, 400*e.unit)
	require.ErrorIs(e, err, lmx.ErrForced)
	for _, key := range []string{"p/a", "p/c"} {
		ctx, cancel := context.WithTimeout(e.Context(), 400*e.unit)
		k, err := e.l.Lock(ctx, key)
		cancel()
		require.NoError(e, err, "%s stayed held after its sibling was lost", key)
		e.unlock(k)
	}
}

// LockAll from many goroutines with random overlapping key sets never
// deadlocks (in a bubble, a deadlock panics) and never grants a key twice.
func testLockAllRandom(e *env) {
	const workers, rounds, nkeys = 50, 8, 10
	m := need[lmx.MultiLocker](e) // skips here, not in a worker, without MultiLocker
	var inside [nkeys]atomic.Int32
	var overlaps atomic.Int32
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			for r := range rounds {
				var keys []string
				var idx []int
				for k := range nkeys {
					if (w*7+r*3+k*k)%4 == 0 || k == (w+r)%nkeys {
						keys = append(keys, fmt.Sprint("rand/", k))
						idx = append(idx, k)
					}
				}
				if w%2 == 1 { // callers name keys in any order
					slices.Reverse(keys)
				}
				l, err := m.LockAll(e.Context(), keys)
				if err != nil {
					errs <- err
					return
				}
				for _, k := range idx {
					if inside[k].Add(1) != 1 {
						overlaps.Add(1)
					}
				}
				for _, k := range idx {
					inside[k].Add(-1)
				}
				if err := l.Unlock(e.Context()); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	e.waitWorkers(errs, workers, "LockAll deadlocked")
	assert.Zero(e, overlaps.Load(), "a key was granted twice")
}
