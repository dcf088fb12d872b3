package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWriteMetrics(t *testing.T) {
	s := lmx.Stats{Keys: 2, Holders: 3, Waiters: 4, Sessions: 5, Grants: 6, Expiries: 7, Forced: 8, Preemptions: 9, SessionLost: 10}
	s.WaitTime.Counts[0] = 2                          // ≤ 1ms
	s.WaitTime.Counts[4] = 1                          // ≤ 100ms
	s.WaitTime.Counts[len(lmx.HistogramBounds())] = 3 // over 4 hours
	s.WaitTime.Sum = 3*time.Minute + 1500*time.Millisecond
	var buf bytes.Buffer
	require.NoError(t, writeMetrics(&buf, &s))
	got := buf.String()
	for _, want := range []string{
		"# HELP lmx_keys Keys with a holder or a waiter.\n# TYPE lmx_keys gauge\nlmx_keys 2\n",
		"lmx_holders 3\n", "lmx_waiters 4\n", "lmx_sessions 5\n",
		"# TYPE lmx_grants_total counter\nlmx_grants_total 6\n",
		"lmx_expiries_total 7\n", "lmx_forced_total 8\n", "lmx_preemptions_total 9\n", "lmx_session_lost_total 10\n",
		"# TYPE lmx_wait_seconds histogram\n" +
			`lmx_wait_seconds_bucket{le="0.001"} 2` + "\n" +
			`lmx_wait_seconds_bucket{le="0.005"} 2` + "\n" +
			`lmx_wait_seconds_bucket{le="0.01"} 2` + "\n" +
			`lmx_wait_seconds_bucket{le="0.05"} 2` + "\n" +
			`lmx_wait_seconds_bucket{le="0.1"} 3` + "\n" +
			`lmx_wait_seconds_bucket{le="0.5"} 3` + "\n" +
			`lmx_wait_seconds_bucket{le="1"} 3` + "\n" +
			`lmx_wait_seconds_bucket{le="5"} 3` + "\n" +
			`lmx_wait_seconds_bucket{le="10"} 3` + "\n" +
			`lmx_wait_seconds_bucket{le="60"} 3` + "\n" +
			`lmx_wait_seconds_bucket{le="300"} 3` + "\n" +
			`lmx_wait_seconds_bucket{le="900"} 3` + "\n" +
			`lmx_wait_seconds_bucket{le="3600"} 3` + "\n" +
			`lmx_wait_seconds_bucket{le="14400"} 3` + "\n" +
			`lmx_wait_seconds_bucket{le="+Inf"} 6` + "\n" +
			"lmx_wait_seconds_sum 181.5\n" +
			"lmx_wait_seconds_count 6\n",
		`lmx_hold_seconds_bucket{le="+Inf"} 0` + "\nlmx_hold_seconds_sum 0\nlmx_hold_seconds_count 0\n",
	} {
		assert.Contains(t, got, want)
	}
	// Every sample line is a name, optional labels and a number, and every
	// metric has its HELP and TYPE.
	for _, line := range strings.Split(strings.TrimSuffix(got, "\n"), "\n") {
		if strings.HasPrefix(line, "# ") {
			assert.Regexp(t, `^# (HELP lmx_\w+ \S.*|TYPE lmx_\w+ (gauge|counter|histogram))$`, line)
			continue
		}
		assert.Regexp(t, `^lmx_[a-z_]+(\{le="[^"]+"\})? [0-9.e+]+$`, line)
	}
	assert.Equal(t, 11, strings.Count(got, "# TYPE"))
}

func TestMetricsHandler(t *testing.T) {
	b := lmx.NewBroker()
	h := metricsHandler(b)
	get := func(path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec
	}
	l, err := b.Lock(t.Context(), "k")
	require.NoError(t, err)
	rec := get("/metrics")
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "text/plain; version=0.0.4; charset=utf-8", rec.Header().Get("Content-Type"))
	assert.Contains(t, rec.Body.String(), "lmx_holders 1\n")
	assert.Contains(t, rec.Body.String(), "lmx_grants_total 1\n")
	require.NoError(t, l.Unlock(t.Context()))

	rec = get("/healthz")
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "ok\n", rec.Body.String())
	assert.Equal(t, http.StatusNotFound, get("/other").Code)

	b.Close()
	assert.Equal(t, http.StatusServiceUnavailable, get("/healthz").Code)
	assert.Equal(t, http.StatusServiceUnavailable, get("/metrics").Code)
}
