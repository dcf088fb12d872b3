package locktest

// Lock ids and fencing tokens.

import (
	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
