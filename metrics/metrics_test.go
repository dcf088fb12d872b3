package metrics_test

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCollector: a registry scrapes a broker's counts, with a hold of two
// hours in the bucket up to four.
func TestCollector(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := lmx.NewBroker()
		defer b.Close()
		ctx := context.Background()
		l, err := b.Lock(ctx, "backup")
		require.NoError(t, err)
		time.Sleep(2 * time.Hour)
		require.NoError(t, l.Unlock(ctx))
		_, err = b.Lock(ctx, "deploy") // held while scraped
		require.NoError(t, err)

		reg := prometheus.NewPedanticRegistry() // checks Describe against Collect
		require.NoError(t, reg.Register(metrics.NewCollector(b)))
		require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP lmx_holders Leases held.
# TYPE lmx_holders gauge
lmx_holders 1
# HELP lmx_grants_total Leases granted (re-entry not counted).
# TYPE lmx_grants_total counter
lmx_grants_total 2
# HELP lmx_hold_seconds How long ended leases were held.
# TYPE lmx_hold_seconds histogram
lmx_hold_seconds_bucket{le="0.001"} 0
lmx_hold_seconds_bucket{le="0.005"} 0
lmx_hold_seconds_bucket{le="0.01"} 0
lmx_hold_seconds_bucket{le="0.05"} 0
lmx_hold_seconds_bucket{le="0.1"} 0
lmx_hold_seconds_bucket{le="0.5"} 0
lmx_hold_seconds_bucket{le="1"} 0
lmx_hold_seconds_bucket{le="5"} 0
lmx_hold_seconds_bucket{le="10"} 0
lmx_hold_seconds_bucket{le="60"} 0
lmx_hold_seconds_bucket{le="300"} 0
lmx_hold_seconds_bucket{le="900"} 0
lmx_hold_seconds_bucket{le="3600"} 0
lmx_hold_seconds_bucket{le="14400"} 1
lmx_hold_seconds_bucket{le="+Inf"} 1
lmx_hold_seconds_sum 7200
lmx_hold_seconds_count 1
`), "lmx_holders", "lmx_grants_total", "lmx_hold_seconds"))

		names, err := testutil.GatherAndCount(reg)
		require.NoError(t, err)
		assert.Equal(t, 11, names, "4 gauges, 5 counters, 2 histograms")
	})
}

// TestCollectorFailsScrape: a broker that cannot answer fails the scrape,
// rather than reporting counts that are not its.
func TestCollectorFailsScrape(t *testing.T) {
	b := lmx.NewBroker()
	reg := prometheus.NewRegistry()
	require.NoError(t, reg.Register(metrics.NewCollector(b)))
	_, err := reg.Gather()
	require.NoError(t, err)

	b.Close()
	_, err = reg.Gather()
	assert.ErrorIs(t, err, lmx.ErrClosed)
}

// TestCollectorOfClient: a Client's counts are its broker's, so that a
// sidecar can export a broker it does not embed.
func TestCollectorOfClient(t *testing.T) {
	b := lmx.NewBroker()
	defer b.Close()
	addr, err := b.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx := t.Context()
	c, err := lmx.Dial(ctx, "tcp://"+addr.String())
	require.NoError(t, err)
	defer c.Close()
	_, err = b.Lock(ctx, "k")
	require.NoError(t, err)

	reg := prometheus.NewRegistry()
	require.NoError(t, reg.Register(metrics.NewCollector(c)))
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP lmx_holders Leases held.
# TYPE lmx_holders gauge
lmx_holders 1
# HELP lmx_sessions Network sessions open.
# TYPE lmx_sessions gauge
lmx_sessions 1
`), "lmx_holders", "lmx_sessions"))
}
