package main

import (
	"fmt"
	"strings"
	"time"
)

// A target is one of DESIGN.md's performance targets: a ratio of two rows
// of the same run, a fairness or a broker's memory.
type target struct {
	name     string
	workload string
	service  string
	ref      string  // the reference service of a ratio; "" for fairness
	min      float64 // the least ratio or fairness that meets it
}

var targets = []target{
	{"hot20 ≥ 5x live-mutex", "hot20", "lmx-unix", "live-mutex", 5},
	{"hot20 ≥ 5x Redis+redislock", "hot20", "lmx-unix", "redis-redislock", 5},
	{"hot20 fairness ≥ 0.99", "hot20", "lmx-unix", "", 0.99},
	{"hot1 ≥ 0.8x raw echo (Unix socket)", "hot1", "lmx-unix", "echo-unix", 0.8},
	{"hot1 ≥ 0.8x raw echo (TCP)", "hot1", "lmx-tcp", "echo-tcp", 0.8},
	{"keys200 ≥ 4x Redis+redislock", "keys200", "lmx-unix", "redis-redislock", 4},
	{"keys200 ≥ 0.5x pipelined echo", "keys200", "lmx-unix", "echo-pipelined-unix", 0.5},
	{"Redis door: hot20 ≥ 2x Redis+redislock", "hot20", "lmx-redis", "redis-redislock", 2},
	{"Redis door: hot20 fairness ≥ 0.99", "hot20", "lmx-redis", "", 0.99},
	{"Redis door: keys200 ≥ 1x Redis+redislock", "keys200", "lmx-redis", "redis-redislock", 1},
	{"etcd door hot20 ≥ 2x concurrency.Mutex", "hot20", "lmx-etcd", "etcd", 2},
	{"etcd door keys20 ≥ 1x concurrency.Mutex", "keys20", "lmx-etcd", "etcd", 1},
	{"etcd door keys200 ≥ 1x concurrency.Mutex", "keys200", "lmx-etcd", "etcd", 1},
}

// A worstTarget bounds the worst acquire of a service's workload.
type worstTarget struct {
	name, workload, service string
	max                     time.Duration // the worst acquire must be under it
}

var worstTargets = []worstTarget{
	{"Redis door: hot20 worst acquire < 10ms", "hot20", "lmx-redis", 10 * time.Millisecond},
}

// The cross-client hand-off target: a hot key handed between Clients
// (lmx-unix-clients hot20, every hand-off crossing the broker) costs at most
// maxHandoffRTs round trips, a round trip being half an echo-unix hot1 cycle.
const maxHandoffRTs = 1.3

// The RSS target: at most maxRSS MiB once the broker has served rssCycles.
const (
	maxRSS    = 20
	rssCycles = 250_000
)

// renderTargets judges the targets whose rows the run has, as a markdown
// section to follow the table; "" when it has none.
func renderTargets(rows []row) string {
	ok := make(map[string]row)
	for _, r := range rows {
		if len(r.all) > 0 {
			ok[r.service+"/"+r.workload] = r
		}
	}
	var b strings.Builder
	line := func(name, measured string, met bool) {
		verdict := "not met"
		if met {
			verdict = "met"
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", name, measured, verdict)
	}
	for _, t := range targets {
		r, have := ok[t.service+"/"+t.workload]
		if !have {
			continue
		}
		if t.ref == "" {
			line(t.name, fmt.Sprintf("%s %.3f", t.service, r.res.fairness), r.res.fairness >= t.min)
			continue
		}
		ref, have := ok[t.ref+"/"+t.workload]
		if !have || ref.res.perSec == 0 {
			continue
		}
		x := r.res.perSec / ref.res.perSec
		line(t.name, fmt.Sprintf("%s %.0f vs %s %.0f = %.2fx%s", t.service, r.res.perSec, t.ref, ref.res.perSec, x, roundRatios(r, ref)), x >= t.min)
	}
	for _, t := range worstTargets {
		if r, have := ok[t.service+"/"+t.workload]; have {
			line(t.name, fmt.Sprintf("%s %v", t.service, r.res.worst), r.res.worst < t.max)
		}
	}
	if h, have := ok["lmx-unix-clients/hot20"]; have && h.res.perSec > 0 {
		if e, have := ok["echo-unix/hot1"]; have {
			rts := 2 * e.res.perSec / h.res.perSec
			line(fmt.Sprintf("hot key between Clients ≤ %.1f round trips a hand-off", maxHandoffRTs),
				fmt.Sprintf("lmx-unix-clients hot20 %.0f vs echo-unix hot1 %.0f (2 round trips a cycle) = %.2f round trips", h.res.perSec, e.res.perSec, rts),
				rts <= maxHandoffRTs)
		}
	}
	for _, r := range rows {
		if r.service != "lmx-unix" || r.rssMiB == 0 {
			continue
		}
		name := fmt.Sprintf("broker RSS ≤ %d MiB after %d cycles", maxRSS, rssCycles)
		measured := fmt.Sprintf("%.1f MiB after %d cycles", r.rssMiB, r.served)
		if r.served < rssCycles {
			fmt.Fprintf(&b, "| %s | %s | not judged: too few cycles |\n", name, measured)
		} else {
			line(name, measured, r.rssMiB <= maxRSS)
		}
		break
	}
	if b.Len() == 0 {
		return ""
	}
	return "\n## targets\n\n| target | measured | |\n|---|---|---|\n" + b.String()
}

// roundRatios lists the ratio of r to ref in each round that both ran, so
// that the verdict, which the medians make, shows how far the rounds agree.
func roundRatios(r, ref row) string {
	n := min(len(r.all), len(ref.all))
	if n < 2 {
		return ""
	}
	var b strings.Builder
	b.WriteString(" (rounds:")
	for i := range n { // a run that made no cycle failed: perSec > 0
		fmt.Fprintf(&b, " %.2fx", r.all[i].perSec/ref.all[i].perSec)
	}
	b.WriteString(")")
	return b.String()
}
