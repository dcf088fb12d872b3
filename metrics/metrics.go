// Package metrics exposes an lmx lock table's counts to Prometheus: a
// [Collector] that a service registers beside its own metrics, for a
// [lmx.Broker] it embeds or a broker it reaches with [lmx.Dial].
//
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(metrics.NewCollector(broker))
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// It is a module of its own, so that the lmx library does not bring
// client_golang into builds that do not use it. `lmx start --metrics` serves
// the same metrics.
package metrics

import (
	"context"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/prometheus/client_golang/prometheus"
)

// A Source is a lock table whose counts can be read: a *lmx.Broker, or a
// *lmx.Client of a broker elsewhere.
type Source interface {
	Stats(ctx context.Context) (lmx.Stats, error)
}

// StatsTimeout bounds how long a scrape waits for a Source's counts; a
// Client's Stats is a round trip to its broker.
const StatsTimeout = 5 * time.Second

// A Collector is a prometheus.Collector of a Source's Stats. Each scrape
// reads them once; a scrape that cannot (the broker is closed, the
// connection lost) fails with the error instead of reporting stale counts.
//
// Its metrics are the gauges lmx_keys, lmx_holders, lmx_waiters and
// lmx_sessions; the counters lmx_grants_total, lmx_expiries_total,
// lmx_forced_total, lmx_preemptions_total and lmx_session_lost_total; and the
// histograms lmx_wait_seconds (how long granted requests waited) and
// lmx_hold_seconds (how long ended leases were held), with the buckets of
// lmx.HistogramBounds, from a millisecond to four hours.
type Collector struct {
	src      Source
	gauges   []*prometheus.Desc // in the order of gaugeValues
	counters []*prometheus.Desc // in the order of counterValues
	wait     *prometheus.Desc
	hold     *prometheus.Desc
	bounds   []float64 // lmx.HistogramBounds in seconds
}

// NewCollector returns a Collector of src's counts. Register it once per
// Source in a registry.
func NewCollector(src Source) *Collector {
	desc := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	c := &Collector{
		src: src,
		gauges: []*prometheus.Desc{
			desc("lmx_keys", "Keys with a holder or a waiter."),
			desc("lmx_holders", "Leases held."),
			desc("lmx_waiters", "Lock requests queued."),
			desc("lmx_sessions", "Network sessions open."),
		},
		counters: []*prometheus.Desc{
			desc("lmx_grants_total", "Leases granted (re-entry not counted)."),
			desc("lmx_expiries_total", "Leases ended by their TTL."),
			desc("lmx_forced_total", "Leases ended by ForceUnlock."),
			desc("lmx_preemptions_total", "Leases ended by preemption."),
			desc("lmx_session_lost_total", "Leases ended because their session ended."),
		},
		wait: desc("lmx_wait_seconds", "How long granted requests waited in a queue."),
		hold: desc("lmx_hold_seconds", "How long ended leases were held."),
	}
	for _, b := range lmx.HistogramBounds() {
		c.bounds = append(c.bounds, b.Seconds())
	}
	return c
}

func gaugeValues(s *lmx.Stats) []int { return []int{s.Keys, s.Holders, s.Waiters, s.Sessions} }

func counterValues(s *lmx.Stats) []uint64 {
	return []uint64{s.Grants, s.Expiries, s.Forced, s.Preemptions, s.SessionLost}
}

// Describe sends the descriptors of every metric the Collector reports.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range append(append(c.gauges, c.counters...), c.wait, c.hold) {
		ch <- d
	}
}

// Collect reads the Source's Stats and sends them as metrics, or an invalid
// metric carrying the error, which fails the scrape.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), StatsTimeout)
	defer cancel()
	s, err := c.src.Stats(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.gauges[0], err)
		return
	}
	for i, v := range gaugeValues(&s) {
		ch <- prometheus.MustNewConstMetric(c.gauges[i], prometheus.GaugeValue, float64(v))
	}
	for i, v := range counterValues(&s) {
		ch <- prometheus.MustNewConstMetric(c.counters[i], prometheus.CounterValue, float64(v))
	}
	ch <- c.histogram(c.wait, &s.WaitTime)
	ch <- c.histogram(c.hold, &s.HoldTime)
}

// histogram turns h into a Prometheus histogram: cumulative buckets, the
// last one, above every bound, being +Inf.
func (c *Collector) histogram(d *prometheus.Desc, h *lmx.Histogram) prometheus.Metric {
	buckets := make(map[float64]uint64, len(c.bounds))
	var cum uint64
	for i, le := range c.bounds {
		cum += h.Counts[i]
		buckets[le] = cum
	}
	cum += h.Counts[len(c.bounds)]
	return prometheus.MustNewConstHistogram(d, cum, h.Sum.Seconds(), buckets)
}
