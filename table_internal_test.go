package lmx

import (
	"context"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A table that held a burst of keys gives their memory back once they are
// gone: every shard rebuilds its map and its TTL heap at the size it needs,
// and keeps no more recycled entries than maxFree.
func TestBurstOfKeysIsGivenBack(t *testing.T) {
	ctx := context.Background()
	b := NewBroker()
	defer b.Close()
	n := shrinkMin * numShards * 5 / 4 // about 1,280 keys a shard
	leases := make([]*Lease, 0, n)
	for i := range n {
		l, err := b.Lock(ctx, fmt.Sprint("burst/", i), TTL(time.Hour))
		require.NoError(t, err)
		leases = append(leases, l)
	}
	grown := 0
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		if sh.peak >= shrinkMin {
			grown++
		}
		sh.mu.Unlock()
	}
	require.Positive(t, grown, "no shard held shrinkMin keys: the test tests nothing")
	for _, l := range leases {
		require.NoError(t, l.Unlock(ctx))
	}
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		require.LessOrEqual(t, len(sh.keys), 1, "shard %d", i) // its idle entry
		require.Less(t, sh.peak, shrinkMin, "shard %d kept the map of its burst", i)
		require.Less(t, cap(sh.deadlines), shrinkMin, "shard %d kept the heap of its burst", i)
		require.LessOrEqual(t, len(sh.free), maxFree)
		sh.mu.Unlock()
	}
	// The rebuilt shards still work.
	l, err := b.Lock(ctx, "burst/0")
	require.NoError(t, err)
	require.NoError(t, l.Unlock(ctx))
}

// A key held by one lease and nothing else costs no entry: the shard's map
// holds the lease. A second party gives it one, which goes once the key is
// idle; Inspect, List and ForceUnlock see a lone holder as any other.
func TestLoneHolderHasNoEntry(t *testing.T) {
	synctest.Test(t, testLoneHolder)
}

func testLoneHolder(t *testing.T) {
	ctx := context.Background()
	b := NewBroker()
	defer b.Close()
	sh := b.shardFor("k")
	keyOf := func() (*Lease, *entry) {
		sh.mu.Lock()
		defer sh.mu.Unlock()
		v := sh.atLocked("k")
		return v, v.e
	}
	l, err := b.Lock(ctx, "k")
	require.NoError(t, err)
	v, e := keyOf()
	require.Same(t, l, v)
	require.Nil(t, e)
	_, err = b.TryLock(ctx, "k")
	require.ErrorIs(t, err, ErrLocked)
	_, err = b.TryLock(ctx, "k", Limit(2))
	require.ErrorIs(t, err, ErrLimitMismatch)
	_, e = keyOf()
	require.Nil(t, e, "a failed TryLock made an entry")
	ki, err := b.Inspect(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, KeyInfo{Key: "k", Limit: 1, Holders: []HolderInfo{{ID: l.ID(), Token: l.Token(), Count: 1, Since: time.UnixMilli(int64(l.ID().Time()))}}}, ki)
	ks, err := b.List(ctx, "", 0)
	require.NoError(t, err)
	require.Equal(t, []KeyStat{{Key: "k", Limit: 1, Holders: 1}}, ks)

	got := make(chan *Lease)
	go func() {
		w, err := b.Lock(ctx, "k")
		assert.NoError(t, err)
		got <- w
	}()
	synctest.Wait()
	_, e = keyOf()
	require.True(t, e != nil && e.waiters.n == 1 && e.holders.head == l, "a waiter did not give the key an entry")
	require.NoError(t, l.Unlock(ctx))
	w := <-got
	require.Greater(t, w.Token(), l.Token())
	require.NoError(t, b.ForceUnlock(ctx, "k"))
	require.ErrorIs(t, w.Err(), ErrForced)
	v, _ = keyOf()
	require.Same(t, sh.idle, v, "the idle entry stays as the shard's idle key")

	l, err = b.Lock(ctx, "k") // the idle entry serves
	require.NoError(t, err)
	require.NoError(t, b.ForceUnlock(ctx, "k"))
	require.ErrorIs(t, l.Err(), ErrForced)
	l, err = b.Lock(ctx, "lone", LockDelay(time.Hour))
	require.NoError(t, err)
	require.NoError(t, b.ForceUnlock(ctx, "lone"))
	_, err = b.TryLock(ctx, "lone")
	require.ErrorIs(t, err, ErrLocked, "a lone holder's lock-delay did not hold")
}

// The shard's idle key locked again is held with no map write: keys goes on
// holding the idle lease and reheld the holder. Every reader of the table
// sees that holder as any lone holder, until another key of the shard goes
// idle and keys holds it in its own right, and Close ends it.
func TestReheldIdleKey(t *testing.T) {
	ctx := context.Background()
	b := NewBroker()
	sh := b.shardFor("k")
	other := ""
	for i := 0; other == ""; i++ {
		if k := fmt.Sprint("other/", i); b.shardFor(k) == sh {
			other = k
		}
	}
	lockTwice := func(key string) *Lease {
		l, err := b.Lock(ctx, key)
		require.NoError(t, err)
		require.NoError(t, l.Unlock(ctx))
		l, err = b.Lock(ctx, key) // the idle key again
		require.NoError(t, err)
		return l
	}
	holds := func(l *Lease, why string) {
		ki, err := b.Inspect(ctx, l.Key())
		require.NoError(t, err)
		require.Len(t, ki.Holders, 1, why)
		require.Equal(t, l.ID(), ki.Holders[0].ID, why)
		ks, err := b.List(ctx, l.Key(), 0)
		require.NoError(t, err)
		require.Equal(t, []KeyStat{{Key: l.Key(), Limit: 1, Holders: 1}}, ks, why)
		_, err = b.TryLock(ctx, l.Key())
		require.ErrorIs(t, err, ErrLocked, why)
	}

	l := lockTwice("k")
	sh.mu.Lock()
	require.Same(t, l, sh.reheld, "the idle key locked again was written to the map")
	sh.mu.Unlock()
	holds(l, "reheld")
	st, err := b.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, st.Keys)
	require.Equal(t, 1, st.Holders)

	o := lockTwice(other)
	require.NoError(t, o.Unlock(ctx)) // other goes idle: keys holds l for "k"
	sh.mu.Lock()
	require.Nil(t, sh.reheld)
	require.Same(t, l, sh.keys["k"])
	sh.mu.Unlock()
	holds(l, "held in the map")
	require.NoError(t, l.Unlock(ctx))

	l = lockTwice("k")
	require.NoError(t, b.Release(ctx, "k", l.ID()))
	require.ErrorIs(t, l.Err(), ErrReleased)
	l = lockTwice("k")
	require.NoError(t, b.Close())
	require.ErrorIs(t, l.Err(), ErrClosed, "Close missed the reheld lease")
}
