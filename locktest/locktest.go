// Package locktest is the conformance suite for lmx.Locker implementations:
// every door to a lock table (the in-process broker, the network client, the
// backends) runs the same tests, so they keep one contract.
//
// A door that also implements lmx.Admin gets the tests of Release, Inspect,
// ForceUnlock and Stats, and the tests that watch a queue form; a door
// without it skips those, each with its reason.
package locktest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Factory returns a new, empty lock table door and arranges, with t.Cleanup,
// for it to be closed. In the default mode it is called inside a
// testing/synctest bubble, and everything it starts must belong to it.
type Factory func(t testing.TB) lmx.Locker

// An Option changes how Run runs the suite.
type Option func(*config)

type config struct {
	realTime bool
	unit     time.Duration
	skip     map[string]string
}

// Skip skips the tests named (as in Run's subtests: "Reentrant", ...) with
// reason, for a door that documents that it does not offer what they test.
func Skip(reason string, names ...string) Option {
	return func(c *config) {
		if c.skip == nil {
			c.skip = map[string]string{}
		}
		for _, n := range names {
			c.skip[n] = reason
		}
	}
}

// RealTime runs every test on the real clock instead of inside a
// testing/synctest bubble, for doors whose I/O a bubble cannot hold (a real
// socket). Time-dependent tests then use TTLs of a few multiples of unit and
// generous bounds; unit <= 0 means 25ms.
func RealTime(unit time.Duration) Option {
	return func(c *config) {
		c.realTime = true
		if unit > 0 {
			c.unit = unit
		}
	}
}

// Run runs the suite against the doors newLocker makes, one per test.
func Run(t *testing.T, newLocker Factory, opts ...Option) {
	c := config{unit: 25 * time.Millisecond}
	for _, o := range opts {
		o(&c)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if reason, ok := c.skip[tc.name]; ok {
				t.Skip(reason)
			}
			if c.realTime {
				tc.f(newEnv(t, newLocker(t), c.unit, false))
				return
			}
			// Inside a bubble time is fake: a unit of a second costs nothing
			// and leaves no room for scheduling noise.
			synctest.Test(t, func(t *testing.T) {
				tc.f(newEnv(t, newLocker(t), time.Second, true))
			})
		})
	}
}

var tests = []struct {
	name string
	f    func(*env)
}{
	{"LockUnlock", testLockUnlock},
	{"TryLock", testTryLock},
	{"MutualExclusion", testMutualExclusion},
	{"FIFO", testFIFO},
	{"NoBarging", testNoBarging},
	{"Cancel", testCancel},
	{"CancelBefore", testCancelBefore},
	{"CancelRace", testCancelRace},
	{"UnlockCancelledContext", testUnlockCancelledContext},
	{"ReleaseByID", testReleaseByID},
	{"StaleUnlock", testStaleUnlock},
	{"Tokens", testTokens},
	{"TTLExpiry", testTTLExpiry},
	{"TTLExtend", testTTLExtend},
	{"KeepAlive", testKeepAlive},
	{"Semaphore", testSemaphore},
	{"Shared", testShared},
	{"Priority", testPriority},
	{"Reentrant", testReentrant},
	{"ForceUnlock", testForceUnlock},
	{"Inspect", testInspect},
	{"InvalidInput", testInvalidInput},
	{"IdleKeysFreed", testIdleKeysFreed},
	{"PreemptReleasedInGrace", testPreemptReleasedInGrace},
	{"PreemptForced", testPreemptForced},
	{"PreemptRefused", testPreemptRefused},
	{"PriorityStarvationBound", testStarvationBound},
	{"LockDelay", testLockDelay},
	{"LockAll", testLockAll},
	{"LockAllWaits", testLockAllWaits},
	{"LockAllPartLost", testLockAllPartLost},
	{"LockAllRandom", testLockAllRandom},
	{"List", testList},
	{"StatsHistograms", testStatsHistograms},
	{"Watch", testWatch},
	{"WatchLagged", testWatchLagged},
	{"Close", testClose},
}

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
	if e.admin == nil {
		e.Skip("the door does not implement lmx.Admin")
	}
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
	for range workers {
		select {
		case err := <-errs:
			require.NoError(e, err)
		case <-time.After(4000 * e.unit):
			e.Fatal("workers did not finish")
		}
	}
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

func testReleaseByID(e *env) {
	e.needAdmin()
	l := e.lock("r")
	other := e.lock("r2")
	err := e.admin.Release(e.Context(), "r", other.ID())
	require.ErrorIs(e, err, lmx.ErrNotHeld, "an id of another key must not release")
	e.assertHeld(l)
	require.NoError(e, e.admin.Release(e.Context(), "r", l.ID()))
	require.ErrorIs(e, e.waitDone(l, 400*e.unit), lmx.ErrReleased)
	require.ErrorIs(e, e.admin.Release(e.Context(), "r", l.ID()), lmx.ErrNotHeld)
	e.assertFree("r")
	e.assertHeld(other)
	e.unlock(other)
}

func testStaleUnlock(e *env) {
	old := e.lock("s")
	e.unlock(old)
	cur := e.lock("s")
	require.ErrorIs(e, old.Unlock(e.Context()), lmx.ErrNotHeld)
	if e.admin != nil {
		require.ErrorIs(e, e.admin.Release(e.Context(), "s", old.ID()), lmx.ErrNotHeld)
	}
	e.assertHeld(cur)
	e.assertLocked("s")
	assert.NotEqual(e, old.ID(), cur.ID())
	e.unlock(cur)
}

func testTokens(e *env) {
	var last uint64
	for range 3 {
		l := e.lock("t")
		require.Greater(e, l.Token(), last, "tokens of a key must increase in grant order")
		last = l.Token()
		e.unlock(l)
	}
	// Each semaphore slot and each reader has its own token.
	var slots []*lmx.Lease
	for range 3 {
		l := e.lock("sem", lmx.Limit(3))
		require.Greater(e, l.Token(), last)
		last = l.Token()
		slots = append(slots, l)
	}
	for _, l := range slots {
		e.unlock(l)
	}
	r1 := e.lock("t", lmx.Shared())
	r2 := e.lock("t", lmx.Shared())
	require.Greater(e, r1.Token(), last)
	require.Greater(e, r2.Token(), r1.Token())
	e.unlock(r1)
	e.unlock(r2)
}

func testTTLExpiry(e *env) {
	start := time.Now()
	l := e.lock("x", lmx.TTL(8*e.unit))
	exp := l.Expires()
	assert.WithinRange(e, exp, start.Add(8*e.unit), time.Now().Add(8*e.unit))

	ch := make(chan result, 1)
	e.lockAsync(e.Context(), ch, "next", "x")
	time.Sleep(e.unit)
	e.assertHeld(l)
	e.none(ch)

	err := e.waitDone(l, 400*e.unit)
	assert.GreaterOrEqual(e, time.Since(start), 8*e.unit, "expired early")
	require.ErrorIs(e, err, lmx.ErrExpired)
	require.ErrorIs(e, err, lmx.ErrLeaseLost)
	next := e.recv(ch)
	require.NoError(e, next.err, "the next waiter gets an expired key")
	require.Greater(e, next.lease.Token(), l.Token())

	err = l.Unlock(e.Context())
	require.ErrorIs(e, err, lmx.ErrNotHeld)
	require.ErrorIs(e, err, lmx.ErrExpired)
	require.ErrorIs(e, l.Extend(e.Context(), e.unit), lmx.ErrNotHeld, "an expired lease is never revived")
	e.assertHeld(next.lease)
	e.unlock(next.lease)
}

func testTTLExtend(e *env) {
	l := e.lock("x", lmx.TTL(8*e.unit))
	time.Sleep(4 * e.unit)
	before := time.Now()
	require.NoError(e, l.Extend(e.Context(), 16*e.unit))
	assert.WithinRange(e, l.Expires(), before.Add(16*e.unit), time.Now().Add(16*e.unit))
	time.Sleep(8 * e.unit) // past the first expiry
	e.assertHeld(l)
	require.ErrorIs(e, e.waitDone(l, 400*e.unit), lmx.ErrExpired)
	assert.GreaterOrEqual(e, time.Since(before), 16*e.unit, "expired before its extended TTL")

	// Extend gives a lease without TTL one.
	n := e.lock("y")
	require.NoError(e, n.Extend(e.Context(), 8*e.unit))
	assert.False(e, n.Expires().IsZero())
	require.ErrorIs(e, e.waitDone(n, 400*e.unit), lmx.ErrExpired)

	m := e.lock("z")
	require.ErrorIs(e, m.Extend(e.Context(), 0), lmx.ErrInvalidOption)
	require.ErrorIs(e, m.Extend(e.Context(), -e.unit), lmx.ErrInvalidOption)
	assert.True(e, m.Expires().IsZero())
	e.unlock(m)
}

func testKeepAlive(e *env) {
	start := time.Now()
	l := e.lock("k", lmx.TTL(8*e.unit), lmx.KeepAlive(40*e.unit))
	time.Sleep(24 * e.unit) // three TTLs
	e.assertHeld(l)
	if e.bubble {
		assert.True(e, l.Expires().After(time.Now()), "a kept-alive lease never looks expired")
	} else { // a stalled machine may delay a renewal's answer, not the renewals
		assert.True(e, l.Expires().After(start.Add(16*e.unit)), "Expires did not follow the renewals")
	}
	err := e.waitDone(l, 400*e.unit)
	require.ErrorIs(e, err, lmx.ErrExpired)
	held := time.Since(start)
	assert.GreaterOrEqual(e, held, 40*e.unit, "KeepAlive stopped early")
	if e.bubble {
		assert.Equal(e, 40*e.unit, held, "KeepAlive renewed past its max")
	}
	e.assertFree("k")
}

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

func testForceUnlock(e *env) {
	e.needAdmin()
	require.ErrorIs(e, e.admin.ForceUnlock(e.Context(), "f"), lmx.ErrNotHeld)
	r1 := e.lock("f", lmx.Shared())
	r2 := e.lock("f", lmx.Shared())
	ch := make(chan result, 1)
	e.lockAsync(e.Context(), ch, "writer", "f")
	e.waitQueued("f", 1)
	require.NoError(e, e.admin.ForceUnlock(e.Context(), "f"))
	for _, l := range []*lmx.Lease{r1, r2} {
		err := e.waitDone(l, 400*e.unit)
		require.ErrorIs(e, err, lmx.ErrForced)
		require.ErrorIs(e, err, lmx.ErrLeaseLost)
		require.ErrorIs(e, l.Unlock(e.Context()), lmx.ErrNotHeld)
	}
	w := e.recv(ch)
	require.NoError(e, w.err, "the waiter gets a forced key")
	e.unlock(w.lease)
}

func testInspect(e *env) {
	e.needAdmin()
	ki, err := e.admin.Inspect(e.Context(), "i")
	require.NoError(e, err)
	assert.Empty(e, ki.Holders)
	assert.Empty(e, ki.Waiters)

	before := time.Now().Truncate(time.Millisecond)
	h := e.lock("i", lmx.Owner("alice"), lmx.TTL(400*e.unit))
	e.lock("i", lmx.Owner("alice"))
	ch := make(chan result, 1)
	e.lockAsync(e.Context(), ch, "w", "i", lmx.Owner("bob"), lmx.Priority(7), lmx.Shared())
	e.waitQueued("i", 1)

	ki, err = e.admin.Inspect(e.Context(), "i")
	require.NoError(e, err)
	assert.Equal(e, "i", ki.Key)
	assert.Equal(e, 1, ki.Limit)
	require.Len(e, ki.Holders, 1)
	got := ki.Holders[0]
	assert.Equal(e, h.ID(), got.ID)
	assert.Equal(e, h.Token(), got.Token)
	assert.Equal(e, "alice", got.Owner)
	assert.Equal(e, 2, got.Count)
	assert.False(e, got.Shared)
	assert.WithinRange(e, got.Since, before, time.Now())
	assert.True(e, got.Expires.Equal(h.Expires()), "Expires %v, lease says %v", got.Expires, h.Expires())
	assert.Equal(e, []lmx.WaiterInfo{{Owner: "bob", Priority: 7, Shared: true}}, ki.Waiters)

	st, err := e.admin.Stats(e.Context())
	require.NoError(e, err)
	assert.Equal(e, 1, st.Keys)
	assert.Equal(e, 1, st.Holders)
	assert.Equal(e, 1, st.Waiters)
	e.unlock(h)
	e.unlock(h)
	w := e.recv(ch)
	require.NoError(e, w.err)
	e.unlock(w.lease)
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

func testIdleKeysFreed(e *env) {
	e.needAdmin()
	for i := range 100 {
		l := e.lock(fmt.Sprint("idle/", i), lmx.TTL(400*e.unit))
		e.unlock(l)
	}
	ctx, cancel := context.WithTimeout(e.Context(), e.unit)
	defer cancel()
	h := e.lock("idle/held")
	_, err := e.l.Lock(ctx, "idle/held")
	require.ErrorIs(e, err, context.DeadlineExceeded)
	e.unlock(h)
	st, err := e.admin.Stats(e.Context())
	require.NoError(e, err)
	assert.Zero(e, st.Keys, "idle keys must cost nothing")
	assert.Zero(e, st.Holders)
	assert.Zero(e, st.Waiters)
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

func (e *env) watcher() lmx.Watcher {
	e.Helper()
	w, ok := e.l.(lmx.Watcher)
	if !ok {
		e.Skip("the door does not implement lmx.Watcher")
	}
	return w
}

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
	ch, err := e.watcher().Watch(ctx, "w/")
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
	ch, err := e.watcher().Watch(e.Context(), "lag/")
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

func (e *env) multi() lmx.MultiLocker {
	e.Helper()
	m, ok := e.l.(lmx.MultiLocker)
	if !ok {
		e.Skip("the door does not implement lmx.MultiLocker")
	}
	return m
}

func testLockAll(e *env) {
	m := e.multi()
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
	m := e.multi()
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
	l, err := e.multi().LockAll(e.Context(), []string{"p/a", "p/b", "p/c"}, lmx.TTL(400*e.unit))
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
	m := e.multi() // skips here, not in a worker, without MultiLocker
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
	for range workers {
		select {
		case err := <-errs:
			require.NoError(e, err)
		case <-time.After(4000 * e.unit):
			e.Fatal("LockAll deadlocked")
		}
	}
	assert.Zero(e, overlaps.Load(), "a key was granted twice")
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

// After a lease ends without being released, LockDelay keeps its key from
// the next holder for a while; a release is not delayed.
func testLockDelay(e *env) {
	e.needAdmin()
	e.unlock(e.lock("d", lmx.LockDelay(40*e.unit)))
	e.assertFree("d") // released: no delay

	l := e.lock("d", lmx.TTL(4*e.unit), lmx.LockDelay(40*e.unit))
	ch := make(chan result, 1)
	e.lockAsync(e.Context(), ch, "next", "d")
	require.ErrorIs(e, e.waitDone(l, 400*e.unit), lmx.ErrExpired)
	expired := time.Now()
	e.none(ch)
	e.assertLocked("d")
	r := e.recv(ch)
	require.NoError(e, r.err)
	assert.GreaterOrEqual(e, time.Since(expired), 38*e.unit, "granted before the lock-delay ended")
	if e.bubble {
		assert.Equal(e, 40*e.unit, time.Since(expired))
	}
	e.unlock(r.lease)

	f := e.lock("d", lmx.LockDelay(40*e.unit))
	require.NoError(e, e.admin.ForceUnlock(e.Context(), "d"))
	e.waitDone(f, 400*e.unit)
	e.assertLocked("d") // forced: delayed

	_, err := e.l.Lock(e.Context(), "d", lmx.LockDelay(-e.unit))
	require.ErrorIs(e, err, lmx.ErrInvalidOption)
}

func testList(e *env) {
	lister, ok := e.l.(lmx.Lister)
	if !ok {
		e.Skip("the door does not implement lmx.Lister")
	}
	e.lock("ls/b")
	e.lock("ls/a", lmx.Limit(3))
	e.lock("ls/a", lmx.Limit(3))
	e.lock("other")
	e.unlock(e.lock("ls/gone"))
	keys, err := lister.List(e.Context(), "ls/", 0)
	require.NoError(e, err)
	assert.Equal(e, []lmx.KeyStat{{Key: "ls/a", Limit: 3, Holders: 2}, {Key: "ls/b", Limit: 1, Holders: 1}}, keys)
	keys, err = lister.List(e.Context(), "", 1)
	require.NoError(e, err)
	assert.Equal(e, []lmx.KeyStat{{Key: "ls/a", Limit: 3, Holders: 2}}, keys)
}

func testStatsHistograms(e *env) {
	e.needAdmin()
	held := e.lock("h")
	ch := make(chan result, 1)
	e.lockAsync(e.Context(), ch, "w", "h")
	e.waitQueued("h", 1)
	time.Sleep(4 * e.unit)
	e.unlock(held)
	r := e.recv(ch)
	require.NoError(e, r.err)
	e.unlock(r.lease)
	st, err := e.admin.Stats(e.Context())
	require.NoError(e, err)
	assert.Equal(e, uint64(1), st.WaitTime.Count(), "one request waited")
	assert.Equal(e, uint64(2), st.HoldTime.Count(), "two leases ended")
	assert.GreaterOrEqual(e, st.WaitTime.Sum, 4*e.unit-time.Millisecond)
	if e.bubble { // 4s: in the bucket up to 5s
		assert.Equal(e, uint64(1), st.WaitTime.Counts[7], "%+v", st.WaitTime)
		assert.Equal(e, 4*e.unit, st.WaitTime.Sum)
	}
}
