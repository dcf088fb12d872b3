package lmx_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A LockAll whose first key expires while it waits for the next fails at
// once with the loss, gives back what it took and leaves its queue: all or
// nothing, never a lease already lost.
func TestLockAllKeyLostWhileWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := lmx.NewBroker()
		defer b.Close()
		ctx := context.Background()
		y, err := b.Lock(ctx, "y")
		require.NoError(t, err)
		start := time.Now()
		_, err = b.LockAll(ctx, []string{"y", "x"}, lmx.TTL(time.Second))
		require.ErrorIs(t, err, lmx.ErrExpired)
		require.ErrorIs(t, err, lmx.ErrLeaseLost)
		assert.Contains(t, err.Error(), `"x"`)
		assert.Equal(t, time.Second, time.Since(start))
		for _, k := range []string{"x", "y"} {
			ki, err := b.Inspect(ctx, k)
			require.NoError(t, err)
			assert.Empty(t, ki.Waiters, k)
		}
		assert.Nil(t, y.Err())
		l, err := b.TryLock(ctx, "x")
		require.NoError(t, err)
		require.NoError(t, l.Unlock(ctx))
		require.NoError(t, y.Unlock(ctx))
	})
}
