package lmx_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TTL leases are heap slots, not goroutines: holding many starts none, and
// ending many at the same instant starts no more than one per shard.
func TestManyTTLLeasesStartNoGoroutines(t *testing.T) {
	const n = 100_000
	synctest.Test(t, func(t *testing.T) {
		b := lmx.NewBroker()
		defer b.Close()
		ctx := context.Background()
		before := runtime.NumGoroutine()
		leases := make([]*lmx.Lease, n)
		for i := range leases {
			l, err := b.Lock(ctx, fmt.Sprint("k", i), lmx.TTL(time.Hour))
			require.NoError(t, err)
			leases[i] = l
		}
		assert.LessOrEqual(t, runtime.NumGoroutine(), before+1, "goroutines while %d TTL leases are held", n)

		time.Sleep(time.Hour)
		synctest.Wait()
		for _, l := range leases {
			require.ErrorIs(t, l.Err(), lmx.ErrExpired)
		}
		st, err := b.Stats(ctx)
		require.NoError(t, err)
		assert.Equal(t, uint64(n), st.Expiries)
		assert.Zero(t, st.Keys)
		assert.Zero(t, st.Holders)
	})
}

// Leases expire in the order of their deadlines, whatever the order of their
// grants and extensions.
func TestTTLOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := lmx.NewBroker()
		defer b.Close()
		ctx := context.Background()
		start := time.Now()
		ttls := map[string]time.Duration{"a": 5 * time.Second, "b": time.Second, "c": 3 * time.Second}
		ended := make(chan string, len(ttls))
		for k, ttl := range ttls {
			l, err := b.Lock(ctx, k, lmx.TTL(ttl))
			require.NoError(t, err)
			go func() {
				<-l.Done()
				ended <- fmt.Sprint(k, "@", time.Since(start))
			}()
		}
		l, err := b.Lock(ctx, "d", lmx.TTL(time.Second))
		require.NoError(t, err)
		require.NoError(t, l.Extend(ctx, 4*time.Second))
		go func() {
			<-l.Done()
			ended <- fmt.Sprint("d@", time.Since(start))
		}()
		var got []string
		for range 4 {
			got = append(got, <-ended)
		}
		assert.Equal(t, []string{"b@1s", "c@3s", "d@4s", "a@5s"}, got)
	})
}
