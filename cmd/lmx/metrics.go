package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/lmx-go/lmx"
)

// writeMetrics writes s in the Prometheus text exposition format (version
// 0.0.4), every metric named lmx_*.
func writeMetrics(w io.Writer, s *lmx.Stats) error {
	bw := bufio.NewWriter(w)
	gauge := func(name, help string, v int) {
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s gauge\n%s %d\n", name, help, name, name, v)
	}
	counter := func(name, help string, v uint64) {
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s counter\n%s %d\n", name, help, name, name, v)
	}
	histogram := func(name, help string, h *lmx.Histogram) {
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name)
		var cum uint64
		bounds := lmx.HistogramBounds()
		for i, bound := range bounds {
			cum += h.Counts[i]
			fmt.Fprintf(bw, "%s_bucket{le=\"%s\"} %d\n", name, formatFloat(bound.Seconds()), cum)
		}
		cum += h.Counts[len(bounds)]
		fmt.Fprintf(bw, "%s_bucket{le=\"+Inf\"} %d\n", name, cum)
		fmt.Fprintf(bw, "%s_sum %s\n", name, formatFloat(h.Sum.Seconds()))
		fmt.Fprintf(bw, "%s_count %d\n", name, cum)
	}
	gauge("lmx_keys", "Keys with a holder or a waiter.", s.Keys)
	gauge("lmx_holders", "Leases held.", s.Holders)
	gauge("lmx_waiters", "Lock requests queued.", s.Waiters)
	gauge("lmx_sessions", "Network sessions open.", s.Sessions)
	counter("lmx_grants_total", "Leases granted (re-entry not counted).", s.Grants)
	counter("lmx_expiries_total", "Leases ended by their TTL.", s.Expiries)
	counter("lmx_forced_total", "Leases ended by ForceUnlock.", s.Forced)
	counter("lmx_preemptions_total", "Leases ended by preemption.", s.Preemptions)
	counter("lmx_session_lost_total", "Leases ended because their session ended.", s.SessionLost)
	histogram("lmx_wait_seconds", "How long granted requests waited in a queue.", &s.WaitTime)
	histogram("lmx_hold_seconds", "How long ended leases were held.", &s.HoldTime)
	return bw.Flush()
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// metricsHandler serves /metrics and /healthz for b.
func metricsHandler(b *lmx.Broker) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		s, err := b.Stats(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		writeMetrics(w, &s)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if _, err := b.Stats(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	return mux
}
