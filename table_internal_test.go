package lmx

import (
	"context"
	"fmt"
	"testing"
	"time"

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
