package locktest

// TTL, Extend, KeepAlive and LockDelay.

import (
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
