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
	// cycleScale, if not 0, multiplies a workload's default cycles: for a
	// service whose cycles are so cheap that a default run would end
	// before the scheduler has run every worker, and say nothing of its
	// fairness.
	cycleScale int
	start      func(ctx context.Context, cfg config) (running, error)
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
	cost     cost // per cycle
}

// A row is a service's workload's median over the runs, or why it did not
// run.
type row struct {
	service, workload string
	status            string   // "ok", or why not
	all               []result // each round's, in order
	res               result   // their median
	rss               string
	rssMiB            float64 // a memoryReporter's, with served; 0 if none
	served            int64
}

// runMatrix runs each workload of each service cfg.runs times, in rounds:
// each round starts every service anew and runs each of its workloads once.
// So every service's runs are spread over the whole matrix's time, and two
// services' medians come from the same stretches of it: on a shared VM
// throughput moves by up to 2x from one stretch of minutes to the next, and
// one service run minutes after another would be compared with another
// machine. A fresh start each round also samples where each process's
// threads land.
func runMatrix(ctx context.Context, cfg config, log io.Writer) []row {
	var rows []row
	for _, name := range cfg.services {
		for _, w := range cfg.workloads {
			rows = append(rows, row{service: name, workload: w, status: "ok"})
		}
	}
	for round := 1; round <= cfg.runs && ctx.Err() == nil; round++ {
		for i, name := range cfg.services {
			svc, _ := serviceByName(name)
			runService(ctx, cfg, svc, round, rows[i*len(cfg.workloads):(i+1)*len(cfg.workloads)], log)
		}
	}
	for i := range rows {
		r := &rows[i]
		if len(r.all) > 0 {
			r.res = median(r.all)
		}
		if ctx.Err() != nil && r.status == "ok" && len(r.all) < cfg.runs {
			r.status = "interrupted"
		}
	}
	if !cfg.smoke {
		soakRSS(ctx, cfg, rows, log)
	}
	return rows
}

// runService starts svc and runs each workload of rows once, unless an
// earlier round failed it, adding the results to rows.
func runService(ctx context.Context, cfg config, svc service, round int, rows []row, log io.Writer) {
	if !anyOK(rows) {
		return // it could not start, or failed every workload, before
	}
	fmt.Fprintf(log, "lmxbench: round %d: starting %s\n", round, svc.name)
	r, err := svc.start(ctx, cfg)
	if err != nil {
		fmt.Fprintf(log, "lmxbench: %s: %v\n", svc.name, err)
		status := "error: " + oneLine(err.Error())
		if errors.Is(err, errUnavailable) {
			status = oneLine(err.Error())
		}
		for i := range rows {
			rows[i].status = status
		}
		return
	}
	defer r.close()
	for i := range rows {
		rw := &rows[i]
		if rw.status != "ok" || ctx.Err() != nil {
			continue
		}
		wl, _ := workloadByName(rw.workload)
		res, err := runWorkload(ctx, r, wl, cycles(cfg, svc, wl), cfg.timeout)
		if err != nil {
			fmt.Fprintf(log, "lmxbench: %s %s round %d: %v\n", svc.name, rw.workload, round, err)
			rw.status = "error: " + oneLine(err.Error())
			continue
		}
		fmt.Fprintf(log, "lmxbench: %s %s round %d: %.0f cycles/s, p50 %v, p99 %v, fairness %.3f, %v\n",
			svc.name, rw.workload, round, res.perSec, res.p50, res.p99, res.fairness, res.cost)
		rw.all = append(rw.all, res)
	}
	setMemory(r, rows)
}

// anyOK reports whether a workload of rows is still to run.
func anyOK(rows []row) bool {
	return slices.ContainsFunc(rows, func(r row) bool { return r.status == "ok" })
}

// cycles is how many cycles a run of wl on svc makes.
func cycles(cfg config, svc service, wl workload) int {
	n := wl.cycles
	if svc.cycleScale > 0 {
		n *= svc.cycleScale
	}
	if cfg.smoke {
		n = wl.smoke
	}
	if cfg.cycles > 0 {
		n = cfg.cycles
	}
	if svc.maxCycles > 0 && n > svc.maxCycles {
		n = svc.maxCycles
	}
	return n
}

// setMemory records in rows what r, about to be closed, reports of its
// server's memory.
func setMemory(r running, rows []row) {
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
}

// soakRSS measures the RSS target: a round serves fewer than rssCycles, so
// a fresh lmx-unix broker serves that many keys200 cycles, and its memory
// then is what the lmx-unix rows report.
func soakRSS(ctx context.Context, cfg config, rows []row, log io.Writer) {
	var lmxRows []row
	for i, r := range rows {
		if r.service == "lmx-unix" {
			lmxRows = rows[i : i+len(cfg.workloads)]
			break
		}
	}
	if !anyOK(lmxRows) || lmxRows[0].served >= rssCycles || ctx.Err() != nil {
		return
	}
	svc, _ := serviceByName("lmx-unix")
	wl, _ := workloadByName("keys200")
	fmt.Fprintf(log, "lmxbench: lmx-unix: %d keys200 cycles on a fresh broker for its RSS\n", rssCycles)
	r, err := svc.start(ctx, cfg)
	if err != nil {
		fmt.Fprintf(log, "lmxbench: lmx-unix: %v\n", err)
		return
	}
	defer r.close()
	if _, err := runWorkload(ctx, r, wl, rssCycles, cfg.timeout); err != nil {
		fmt.Fprintf(log, "lmxbench: lmx-unix keys200 for the RSS: %v\n", err)
		return
	}
	setMemory(r, lmxRows)
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

// warmWorkers makes wl's workers, and has each do one cycle alone first,
// untimed: what a client sets up on its first request (a connection, a
// session, a script that a fresh Redis compiles) is not what the workload
// measures. It returns the workers made, for the caller to close, even
// with an error.
func warmWorkers(ctx context.Context, r running, wl workload) ([]worker, error) {
	ws := make([]worker, 0, wl.workers)
	for i := range wl.workers {
		w, err := r.newWorker(ctx, i)
		if err != nil {
			return ws, fmt.Errorf("worker %d: %w", i, err)
		}
		ws = append(ws, w)
	}
	for i, w := range ws {
		if _, err := w.cycle(ctx, wl.key(i, rand.New(rand.NewPCG(uint64(i), 2)))); err != nil {
			return ws, fmt.Errorf("worker %d, its first cycle: %w", i, err)
		}
	}
	return ws, nil
}

// runWorkload runs n cycles of wl, shared among its workers as they come,
// and stops early at the timeout (then the cycles done are what counts).
func runWorkload(ctx context.Context, r running, wl workload, n int, timeout time.Duration) (result, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ws, err := warmWorkers(ctx, r, wl)
	defer func() {
		for _, w := range ws {
			w.close()
		}
	}()
	if err != nil {
		return result{}, err
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
	meter := startCost(ctx, r)
	start := time.Now()
	close(gate)
	wg.Wait()
	elapsed := time.Since(start)
	// The run's ctx may have timed out: the readings are not cut short.
	mctx, mcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	spent := meter.stop(mctx)
	mcancel()
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
		cost:     spent.per(total),
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
		cost: cost{
			client: time.Duration(pick(func(r result) float64 { return float64(r.cost.client) })),
			server: time.Duration(pick(func(r result) float64 { return float64(r.cost.server) })),
			cmds:   pick(func(r result) float64 { return r.cost.cmds }),
			queued: pick(func(r result) float64 { return r.cost.queued }),
			ok:     !slices.ContainsFunc(rs, func(r result) bool { return !r.cost.ok }),
			noCmds: rs[0].cost.noCmds,
		},
	}
}

func renderTable(rows []row) string {
	var b strings.Builder
	b.WriteString("| service | workload | cycles/s | p50 acquire | p99 acquire | worst acquire | fairness | cycles | runs | broker RSS | status |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|---|---|\n")
	for _, r := range rows {
		if len(r.all) == 0 {
			fmt.Fprintf(&b, "| %s | %s | – | – | – | – | – | – | 0 | %s | %s |\n", r.service, r.workload, r.rss, r.status)
			continue
		}
		fair := "–"
		if wl, _ := workloadByName(r.workload); wl.workers > 1 {
			fair = fmt.Sprintf("%.3f", r.res.fairness)
		}
		fmt.Fprintf(&b, "| %s | %s | %.0f | %s | %s | %s | %s | %d | %d | %s | %s |\n",
			r.service, r.workload, r.res.perSec, dur(r.res.p50), dur(r.res.p99), dur(r.res.worst),
			fair, r.res.cycles, len(r.all), r.rss, r.status)
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
