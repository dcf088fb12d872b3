package main

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMetricsHandler(t *testing.T) {
	b := lmx.NewBroker()
	h := metricsHandler(b, slog.New(slog.DiscardHandler))
	get := func(path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec
	}
	l, err := b.Lock(t.Context(), "k")
	require.NoError(t, err)
	rec := get("/metrics")
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.Contains(t, rec.Header().Get("Content-Type"), "text/plain")
	body := rec.Body.String()
	for _, want := range []string{
		"lmx_holders 1\n", "lmx_grants_total 1\n", `lmx_wait_seconds_bucket{le="14400"} 0` + "\n",
		"go_build_info{", "go_goroutines ", "process_open_fds ",
	} {
		assert.Contains(t, body, want)
	}
	require.NoError(t, l.Unlock(t.Context()))

	rec = get("/healthz")
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "ok\n", rec.Body.String())
	assert.Equal(t, http.StatusNotFound, get("/other").Code)

	b.Close()
	assert.Equal(t, http.StatusServiceUnavailable, get("/healthz").Code)
	assert.Equal(t, http.StatusInternalServerError, get("/metrics").Code, "a closed broker fails the scrape")
}
