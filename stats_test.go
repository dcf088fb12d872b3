package lmx_test

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHoldTimeHours: a lease held for hours lands in a bucket of its own,
// not in one "above a minute".
func TestHoldTimeHours(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := lmx.NewBroker()
		defer b.Close()
		ctx := context.Background()
		for _, held := range []time.Duration{30 * time.Minute, 2 * time.Hour, 5 * time.Hour} {
			l, err := b.Lock(ctx, "backup")
			require.NoError(t, err)
			time.Sleep(held)
			require.NoError(t, l.Unlock(ctx))
		}
		s, err := b.Stats(ctx)
		require.NoError(t, err)

		bounds := lmx.HistogramBounds()
		require.Len(t, s.HoldTime.Counts, len(bounds)+1)
		want := make([]uint64, len(bounds)+1)
		want[slices.Index(bounds, time.Hour)] = 1   // 30m
		want[slices.Index(bounds, 4*time.Hour)] = 1 // 2h
		want[len(bounds)] = 1                       // 5h, above every bound
		assert.Equal(t, want, s.HoldTime.Counts[:])
		assert.Equal(t, 7*time.Hour+30*time.Minute, s.HoldTime.Sum)
	})
}

// TestHistogramBoundsCopy: the bounds a caller gets are its own; changing
// them changes nothing in how a broker counts.
func TestHistogramBoundsCopy(t *testing.T) {
	bounds := lmx.HistogramBounds()
	bounds[0] = 10 * time.Hour
	assert.Equal(t, time.Millisecond, lmx.HistogramBounds()[0])
	assert.Equal(t, 4*time.Hour, lmx.HistogramBounds()[len(bounds)-1])
}
