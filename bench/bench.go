package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A workload is a number of workers locking and unlocking keys.
type workload struct {
	name    string
	workers int
	cycles  int // default cycles per run
	smoke   int // cycles per run with -smoke
	key     func(w int, r *rand.Rand) string
}

var keys1000 = func() []string {
	k := make([]string, 1000)
	for i := range k {
		k[i] = fmt.Sprint("key/", i)
	}
	return k
}()

var workloads = []workload{
	{"hot1", 1, 5000, 100, func(int, *rand.Rand) string { return "hot" }},
	{"hot20", 20, 10000, 400, func(int, *rand.Rand) string { return "hot" }},
	{"keys20", 20, 20000, 400, func(w int, _ *rand.Rand) string { return keys1000[w] }},
	{"keys200", 200, 50000, 1000, func(_ int, r *rand.Rand) string { return keys1000[r.IntN(len(keys1000))] }},
}

func workloadNames() []string {
	var n []string
	for _, w := range workloads {
		n = append(n, w.name)
	}
	return n
}

func workloadByName(name string) (workload, bool) {
	for _, w := range workloads {
		if w.name == name {
			return w, true
		}
	}
	return workload{}, false
}

// A worker does cycles for one worker goroutine: lock key, unlock it, and
// return how long the lock took.
type worker interface {
	cycle(ctx context.Context, key string) (time.Duration, error)
	close()
}

// A running service makes workers, and is closed at the end.
type running interface {
	// newWorker's ctx is the run's: it ends, at the latest at the run's
	// timeout, when the run does.
	newWorker(ctx context.Context, w int) (worker, error)
	// rss reports the memory of a broker in another process, "" if none.
	rss() string
	close()
}

// A memoryReporter is a running lmx broker in another process that reports
// its RSS in MiB and the cycles it has served, for the RSS target.
type memoryReporter interface {
	memory() (mib float64, served int64, ok bool)
}

// errUnavailable marks a service that cannot run here, such as one whose
// server is not installed.
var errUnavailable = errors.New("unavailable")

// A service is how to start one lock service.
type service struct {
	name  string
	smoke bool // starts fast: part of -smoke
	// maxCycles, if not 0, caps the cycles of a run: for slow services.
	maxCycles int
	start     func(ctx context.Context, cfg config) (running, error)
}

func serviceNames() []string {
	var n []string
	for _, s := range services {
		n = append(n, s.name)
	}
	return n
}

func serviceByName(name string) (service, bool) {
	for _, s := range services {
		if s.name == name {
			return s, true
		}
	}
	return service{}, false
}

var smokeServices = func() []string {
	var n []string
	for _, s := range services {
		if s.smoke {
			n = append(n, s.name)
		}
	}
	return n
}()

// A result is one run of one workload.
type result struct {
	cycles   int
	perSec   float64
	p50, p99 time.Duration
	worst    time.Duration
	fairness float64
}

// A row is a service's workload's median over the runs, or why it did not
// run.
type row struct {
	service, workload string
	status            string // "ok", or why not
	runs              int
	res               result
	rss               string
	rssMiB            float64 // a memoryReporter's, with served; 0 if none
	served            int64
}

func runMatrix(ctx context.Context, cfg config, log io.Writer) []row {
	var rows []row
	for _, name := range cfg.services {
		svc, _ := serviceByName(name)
		rows = append(rows, runService(ctx, cfg, svc, log)...)
	}
	return rows
}

func runService(ctx context.Context, cfg config, svc service, log io.Writer) []row {
	fail := func(status string) []row {
		var rows []row
		for _, w := range cfg.workloads {
			rows = append(rows, row{service: svc.name, workload: w, status: status})
		}
		return rows
	}
	fmt.Fprintf(log, "lmxbench: starting %s\n", svc.name)
	r, err := svc.start(ctx, cfg)
	if err != nil {
		fmt.Fprintf(log, "lmxbench: %s: %v\n", svc.name, err)
		if errors.Is(err, errUnavailable) {
			return fail(oneLine(err.Error()))
		}
		return fail("error: " + oneLine(err.Error()))
	}
	defer r.close()
	var rows []row
	for _, name := range cfg.workloads {
		wl, _ := workloadByName(name)
		n := wl.cycles
		if cfg.smoke {
			n = wl.smoke
		}
		if cfg.cycles > 0 {
			n = cfg.cycles
		}
		if svc.maxCycles > 0 && n > svc.maxCycles {
			n = svc.maxCycles
		}
		rw := row{service: svc.name, workload: name, status: "ok"}
		var results []result
		for i := range cfg.runs {
			if ctx.Err() != nil {
				break
			}
			res, err := runWorkload(ctx, r, wl, n, cfg.timeout)
			if err != nil {
				fmt.Fprintf(log, "lmxbench: %s %s run %d: %v\n", svc.name, name, i+1, err)
				rw.status = "error: " + oneLine(err.Error())
				break
			}
			fmt.Fprintf(log, "lmxbench: %s %s run %d: %.0f cycles/s, p50 %v, p99 %v, fairness %.3f\n",
				svc.name, name, i+1, res.perSec, res.p50, res.p99, res.fairness)
			results = append(results, res)
		}
		if ctx.Err() != nil && rw.status == "ok" && len(results) < cfg.runs {
			rw.status = "interrupted"
		}
		rw.runs = len(results)
		if len(results) > 0 {
			rw.res = median(results)
		}
		rows = append(rows, rw)
	}
	rss := r.rss()
	var mib float64
	var served int64
	if m, ok := r.(memoryReporter); ok {
		if v, n, ok := m.memory(); ok {
			mib, served = v, n
		}
	}
	for i := range rows {
		rows[i].rss, rows[i].rssMiB, rows[i].served = rss, mib, served
	}
	return rows
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

// runWorkload runs n cycles of wl, shared among its workers as they come,
// and stops early at the timeout (then the cycles done are what counts).
func runWorkload(ctx context.Context, r running, wl workload, n int, timeout time.Duration) (result, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ws := make([]worker, 0, wl.workers)
	defer func() {
		for _, w := range ws {
			w.close()
		}
	}()
	for i := range wl.workers {
		w, err := r.newWorker(ctx, i)
		if err != nil {
			return result{}, fmt.Errorf("worker %d: %w", i, err)
		}
		ws = append(ws, w)
	}
	var (
		next     atomic.Int64
		lats     = make([][]time.Duration, wl.workers) // each worker's, set when it stops
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	gate := make(chan struct{}) // all workers start together
	for i := range wl.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			rnd := rand.New(rand.NewPCG(uint64(i), 1))
			lat := make([]time.Duration, 0, n/wl.workers+1)
			defer func() { lats[i] = lat }()
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				d, err := ws[i].cycle(ctx, wl.key(i, rnd))
				if err != nil {
					if ctx.Err() == nil {
						errOnce.Do(func() { firstErr = err; cancel() })
					}
					return
				}
				lat = append(lat, d)
			}
		}()
	}
	start := time.Now()
	close(gate)
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return result{}, firstErr
	}
	var all []time.Duration
	counts := make([]int64, len(lats))
	for i, lat := range lats {
		all = append(all, lat...)
		counts[i] = int64(len(lat))
	}
	total := len(all)
	if total == 0 {
		return result{}, fmt.Errorf("no cycle done in %v", timeout)
	}
	slices.Sort(all)
	res := result{
		cycles:   total,
		perSec:   float64(total) / elapsed.Seconds(),
		p50:      all[len(all)/2],
		p99:      all[min(len(all)-1, len(all)*99/100)],
		worst:    all[len(all)-1],
		fairness: jain(counts),
	}
	return res, nil
}

// jain is Jain's fairness index of counts: 1 when all are equal, 1/n when
// one worker did everything.
func jain(counts []int64) float64 {
	var sum, sq float64
	for _, c := range counts {
		sum += float64(c)
		sq += float64(c) * float64(c)
	}
	if sq == 0 {
		return 0
	}
	return sum * sum / (float64(len(counts)) * sq)
}

// median takes each figure's median over the runs separately.
func median(rs []result) result {
	pick := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		sort.Float64s(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return result{
		cycles:   int(pick(func(r result) float64 { return float64(r.cycles) })),
		perSec:   pick(func(r result) float64 { return r.perSec }),
		p50:      time.Duration(pick(func(r result) float64 { return float64(r.p50) })),
		p99:      time.Duration(pick(func(r result) float64 { return float64(r.p99) })),
		worst:    time.Duration(pick(func(r result) float64 { return float64(r.worst) })),
		fairness: pick(func(r result) float64 { return r.fairness }),
	}
}

func renderTable(rows []row) string {
	var b strings.Builder
	b.WriteString("| service | workload | cycles/s | p50 acquire | p99 acquire | worst acquire | fairness | cycles | runs | broker RSS | status |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|---|---|\n")
	for _, r := range rows {
		if r.runs == 0 {
			fmt.Fprintf(&b, "| %s | %s | – | – | – | – | – | – | 0 | %s | %s |\n", r.service, r.workload, r.rss, r.status)
			continue
		}
		fair := "–"
		if wl, _ := workloadByName(r.workload); wl.workers > 1 {
			fair = fmt.Sprintf("%.3f", r.res.fairness)
		}
		fmt.Fprintf(&b, "| %s | %s | %.0f | %s | %s | %s | %s | %d | %d | %s | %s |\n",
			r.service, r.workload, r.res.perSec, dur(r.res.p50), dur(r.res.p99), dur(r.res.worst),
			fair, r.res.cycles, r.runs, r.rss, r.status)
	}
	return b.String()
}

func dur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.1f µs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}
