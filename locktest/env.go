package locktest

// The test environment: one door, its clock unit, and the helpers the
// tests share.

import (
	"context"
	"reflect"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// env is one test's door and clock.
type env struct {
	*testing.T
	l      lmx.Locker
	admin  lmx.Admin // nil when the door has none
	unit   time.Duration
	bubble bool
}

func newEnv(t *testing.T, l lmx.Locker, unit time.Duration, bubble bool) *env {
	admin, _ := l.(lmx.Admin)
	return &env{T: t, l: l, admin: admin, unit: unit, bubble: bubble}
}

func (e *env) needAdmin() {
	e.Helper()
	need[lmx.Admin](e)
}

// need returns the door as a T, or skips the test, saying so, when the
// door does not implement T.
func need[T any](e *env) T {
	e.Helper()
	v, ok := e.l.(T)
	if !ok {
		e.Skipf("the door does not implement %v", reflect.TypeFor[T]())
	}
	return v
}

func (e *env) lock(key string, opts ...lmx.LockOption) *lmx.Lease {
	e.Helper()
	l, err := e.l.Lock(e.Context(), key, opts...)
	require.NoError(e, err)
	return l
}

func (e *env) unlock(l *lmx.Lease) {
	e.Helper()
	require.NoError(e, l.Unlock(e.Context()))
}

// result is what a background Lock returned.
type result struct {
	name  string
	lease *lmx.Lease
	err   error
}

// lockAsync starts Lock in the background and reports on ch.
func (e *env) lockAsync(ctx context.Context, ch chan<- result, name, key string, opts ...lmx.LockOption) {
	go func() {
		l, err := e.l.Lock(ctx, key, opts...)
		ch <- result{name, l, err}
	}()
}

// recv waits for the next result, failing the test after a long while.
func (e *env) recv(ch <-chan result) result {
	e.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(400 * e.unit):
		e.Fatal("no Lock returned in time")
		return result{}
	}
}

// none checks that no result is ready yet.
func (e *env) none(ch <-chan result) {
	e.Helper()
	e.settle()
	select {
	case r := <-ch:
		e.Fatalf("Lock %q returned (err %v) while it should wait", r.name, r.err)
	default:
	}
}

// settle lets background goroutines run until they block.
func (e *env) settle() {
	if e.bubble {
		synctest.Wait()
	} else {
		time.Sleep(e.unit)
	}
}

// waitQueued waits until key has n waiters.
func (e *env) waitQueued(key string, n int) {
	e.Helper()
	e.needAdmin()
	if e.bubble {
		synctest.Wait()
	}
	for deadline := time.Now().Add(400 * e.unit); ; {
		ki, err := e.admin.Inspect(e.Context(), key)
		require.NoError(e, err)
		if len(ki.Waiters) == n {
			return
		}
		require.Falsef(e, e.bubble || time.Now().After(deadline), "key %q has %d waiters, want %d", key, len(ki.Waiters), n)
		time.Sleep(e.unit / 10)
	}
}

// waitDone waits for l to end and returns its Err.
func (e *env) waitDone(l *lmx.Lease, within time.Duration) error {
	e.Helper()
	select {
	case <-l.Done():
		return l.Err()
	case <-time.After(within):
		e.Fatalf("lease of %q still held after %v", l.Key(), within)
		return nil
	}
}

func (e *env) assertHeld(l *lmx.Lease) {
	e.Helper()
	select {
	case <-l.Done():
		e.Fatalf("lease of %q ended: %v", l.Key(), l.Err())
	default:
	}
	assert.NoError(e, l.Err())
}

func (e *env) assertFree(key string, opts ...lmx.LockOption) {
	e.Helper()
	l, err := e.l.TryLock(e.Context(), key, opts...)
	require.NoError(e, err, "key %q should be free", key)
	e.unlock(l)
}

func (e *env) assertLocked(key string, opts ...lmx.LockOption) {
	e.Helper()
	l, err := e.l.TryLock(e.Context(), key, opts...)
	if err == nil {
		l.Unlock(e.Context())
	}
	require.ErrorIs(e, err, lmx.ErrLocked, "key %q should be locked", key)
}

// waitWorkers waits for n workers to report on errs, each nil or why it
// failed, and fails with stuck if they take too long.
func (e *env) waitWorkers(errs <-chan error, n int, stuck string) {
	e.Helper()
	for range n {
		select {
		case err := <-errs:
			require.NoError(e, err)
		case <-time.After(4000 * e.unit):
			e.Fatal(stuck)
		}
	}
}
