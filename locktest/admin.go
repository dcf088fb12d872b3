package locktest

// The Admin interface: ForceUnlock, Inspect, List and Stats.

import (
	"context"
	"fmt"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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

func testList(e *env) {
	lister := need[lmx.Lister](e)
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
