package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lmx-go/lmx"
)

// Config is one chaos run.
type Config struct {
	Duration time.Duration // how long faults are injected
	Seed     uint64        // the fault schedule's and the workers' seed
	Skip     string        // the negative control: a worker enters this clean key without a lock
	Freeze   string        // the starvation control: this clean worker, found inside a clean key, is stopped (SIGSTOP) for 3/2 of the session timeout, then let go for a half
	Dir      string        // where the sockets go; short, for the 108-byte limit
	Exe      string        // the binary whose Main runs the roles
	Log      io.Writer     // progress, a line every few seconds; nil for none
	Server   *Server       // what the workers lock through; nil for lmx's own broker
}

// A Server is what the workers lock through when it is not lmx's own
// broker: a process running a ServerRole given to Main, which the workers
// and the harness reach with lmx.Open. Its workers are the native ones but
// for the live-mutex door's, and the preemptor's only if the server's
// Lockers take lmx.Priority and lmx.Preempt (see Summary.Preemptor); its
// health is not checked.
type Server struct {
	Role           string                   // the role's name in Main's map
	URL            func(addr string) string // what lmx.Open takes for the server at TCP address addr
	SessionTimeout time.Duration            // how long the server keeps a silent client's leases
}

// The broker's session timeout and the faults' timings.
const (
	heartbeat      = 100 * time.Millisecond
	sessionTimeout = 500 * time.Millisecond
	baseTTL        = 40 * time.Millisecond
	preemptGrace   = 5 * time.Millisecond
)

// Keys are the keys a run locks: the clean ones, which no fault but a
// broker restart touches, and the others.
var Keys = []KeySpec{
	{Name: "clean/a", Kind: Mutex, Clean: true},
	{Name: "clean/b", Kind: Mutex, Clean: true},
	{Name: "clean/sem", Kind: Semaphore, Limit: 3, Clean: true},
	{Name: "clean/rw", Kind: RW, Clean: true},
	{Name: "hot/a", Kind: Mutex},
	{Name: "hot/b", Kind: Mutex},
	{Name: "hot/c", Kind: Mutex},
	{Name: "sem", Kind: Semaphore, Limit: 2},
	{Name: "rw", Kind: RW},
}

// Summary is what a run counted.
type Summary struct {
	Seed     uint64
	Duration time.Duration
	Cycles   int // holds whose Unlock was reported
	Kills    int // workers killed with SIGKILL
	Cuts     int // connections cut by the proxy
	Stalls   int // stalls of the proxy, each longer than the session timeout
	Forces   int // ForceUnlock calls
	Restarts int // broker kills with a restart
	// Preemptor says the preemptor worker ran: always on lmx's broker; on
	// a Server, unless a Lock with Priority and Preempt, tried first, was
	// refused as an invalid option (etcd refuses them).
	Preemptor bool
	Starved   int // holds of clean keys overlapped after their sessions were lost to CPU starvation: see Checker.Settle
	Outcomes  map[Outcome]int
	Released  map[string]int // holds released, by worker
	// Violations counts each kind; Examples describes the first few.
	Violations map[string]int
	Examples   []string
}

// Failed reports whether the run found any violation.
func (s Summary) Failed() bool {
	for _, n := range s.Violations {
		if n > 0 {
			return true
		}
	}
	return false
}

// String gives the run's counts of cycles and faults, the holds released
// by each worker, the count of each kind of violation, and the first
// violations described.
func (s Summary) String() string {
	var b strings.Builder
	o := s.Outcomes
	fmt.Fprintf(&b, "chaos seed %d, %v of faults: cycles %d, kills %d, cuts %d, stalls %d, expiries %d, forced %d (of %d ForceUnlocks), preempted %d (preemptor %s), sessions lost %d (clean holds to starvation %d), broker restarts %d\n",
		s.Seed, s.Duration, s.Cycles, s.Kills, s.Cuts, s.Stalls, o[Expired], o[Forced], s.Forces, o[Preempted], onOff(s.Preemptor), o[Lost], s.Starved, s.Restarts)
	b.WriteString("released by worker:")
	for _, w := range slices.Sorted(maps.Keys(s.Released)) {
		fmt.Fprintf(&b, " %s %d", w, s.Released[w])
	}
	b.WriteString("\nviolations:")
	for _, k := range Kinds {
		fmt.Fprintf(&b, " %s %d", k, s.Violations[k])
	}
	for _, e := range s.Examples {
		b.WriteString("\n  " + e)
	}
	return b.String()
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

type harness struct {
	cfg         Config
	checker     *Checker
	rng         *rand.Rand
	unix        string // the broker's native door
	tcp         string // the same, on TCP; or the server's address
	peer        string // a second TCP address, for a server that needs one
	lm          string // the broker's live-mutex door
	checkerPath string // the checker's socket
	proxy       *proxy
	broker      *proc
	base        health        // the first broker's, before any client came
	timeout     time.Duration // the broker's session timeout
	admin       adminLocker
	workers     map[string]*workerSpec
	procs       map[string]*proc
	sum         Summary
	starts      int
}

func (h *harness) logf(format string, args ...any) {
	if h.cfg.Log != nil {
		fmt.Fprintf(h.cfg.Log, format+"\n", args...)
	}
}

// adminLocker is what the harness asks the broker or server.
type adminLocker interface {
	lmx.Locker
	lmx.Admin
}

// Run runs the chaos harness as cfg says and returns what it counted. An
// error is the harness failing, not lmx.
func Run(ctx context.Context, cfg Config) (Summary, error) {
	h := newHarness(cfg)
	stopChecker, err := h.serveChecker()
	if err != nil {
		return h.sum, err
	}
	defer stopChecker()
	if err := h.pickPorts(); err != nil {
		return h.sum, err
	}
	if err := h.startBroker(); err != nil {
		return h.sum, err
	}
	defer func() {
		if h.broker != nil {
			h.broker.stop(5 * time.Second)
		}
	}()
	if h.proxy, err = newProxy(h.tcp); err != nil {
		return h.sum, err
	}
	defer h.proxy.close()
	d, err := h.openDoors(ctx)
	if err != nil {
		return h.sum, err
	}
	adminOpen := true
	defer func() {
		if adminOpen {
			h.admin.Close()
		}
	}()
	defer func() {
		for _, p := range h.procs {
			p.stop(5 * time.Second)
		}
	}()
	if h.sum.Preemptor, err = h.preempts(ctx); err != nil {
		return h.sum, err
	}
	specs, hot := h.workerSpecs(d)
	killable, err := h.startWorkers(specs)
	if err != nil {
		return h.sum, err
	}
	if err := h.faults(ctx, killable, hot); err != nil {
		return h.sum, err
	}
	err = h.liveness(ctx)
	adminOpen = false
	h.admin.Close()
	if err == nil && cfg.Server == nil {
		h.brokerBack()
	}
	// The broker's last stalls are reported once it has stopped.
	h.broker.stop(5 * time.Second)
	h.broker = nil
	h.finish()
	return h.sum, err
}

// newHarness returns the harness of cfg, with the addresses of its broker.
func newHarness(cfg Config) *harness {
	h := &harness{
		cfg:         cfg,
		rng:         rand.New(rand.NewPCG(cfg.Seed, 0x6c6d78)),
		unix:        filepath.Join(cfg.Dir, "b.sock"),
		lm:          filepath.Join(cfg.Dir, "lm.sock"),
		checkerPath: filepath.Join(cfg.Dir, "c.sock"),
		timeout:     sessionTimeout,
		workers:     make(map[string]*workerSpec),
		procs:       make(map[string]*proc),
		sum:         Summary{Seed: cfg.Seed, Duration: cfg.Duration},
	}
	if cfg.Server != nil {
		h.timeout = cfg.Server.SessionTimeout
	}
	h.checker = NewChecker(Keys, h.timeout)
	return h
}

// serveChecker serves the checker on its socket and returns how to stop.
func (h *harness) serveChecker() (stop func(), err error) {
	cl, err := net.Listen("unix", h.checkerPath)
	if err != nil {
		return nil, err
	}
	var serving sync.WaitGroup
	serving.Add(1)
	go serveChecker(cl, h.checker, &serving)
	return func() {
		cl.Close()
		serving.Wait()
	}, nil
}

// pickPorts picks the broker's TCP addresses: free ports of 127.0.0.1.
func (h *harness) pickPorts() error {
	for _, a := range []*string{&h.tcp, &h.peer} {
		port, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		*a = port.Addr().String()
		port.Close()
	}
	return nil
}

// doors are the addresses the workers lock through: the broker's Unix
// socket (or the server), its TCP port, and the proxy in front of it.
type doors struct{ direct, tcp, proxied string }

// openDoors returns the workers' addresses and opens the harness's own
// Locker, h.admin, on the direct one.
func (h *harness) openDoors(ctx context.Context) (doors, error) {
	var err error
	if srv := h.cfg.Server; srv != nil {
		d := doors{srv.URL(h.tcp), srv.URL(h.tcp), srv.URL(h.proxy.addr())}
		h.admin, err = openAdmin(ctx, d.direct)
		return d, err
	}
	d := doors{"unix://" + h.unix, "tcp://" + h.tcp, "tcp://" + h.proxy.addr()}
	h.admin, err = lmx.Dial(ctx, d.direct, lmx.WithReconnectBackoff(5*time.Millisecond, 100*time.Millisecond))
	return d, err
}

// workerSpecs returns the run's workers, locking through d, and the keys
// the faults touch.
func (h *harness) workerSpecs(d doors) (specs []*workerSpec, hot []KeySpec) {
	var clean, lmKeys []KeySpec
	for _, k := range Keys {
		switch {
		case !k.Clean:
			hot = append(hot, k)
		case k.Kind != RW: // live-mutex 0.2 has no read/write locks
			lmKeys = append(lmKeys, k)
			fallthrough
		default:
			clean = append(clean, k)
		}
	}
	all := append(append([]KeySpec(nil), clean...), hot...)
	specs = []*workerSpec{
		// Never killed nor proxied: the clean keys' holders.
		{Name: "clean-shared", Addr: d.direct, Goroutines: 4, Keys: all, Hold: time.Millisecond},
		{Name: "clean-per", Addr: d.tcp, PerClient: true, Goroutines: 3, Keys: all, Hold: time.Millisecond},
		// Many goroutines of one Client on few keys: hand-offs inside the
		// session all the time.
		{Name: "clean-handoff", Addr: d.direct, Goroutines: 6, Keys: []KeySpec{Keys[0], Keys[1], Keys[4]}, Hold: 200 * time.Microsecond},
		// Killed, proxied, with TTLs and preemption.
		{Name: "proxied-shared", Addr: d.proxied, Goroutines: 4, Keys: hot, Hold: time.Millisecond, TTL: baseTTL},
		{Name: "proxied-per", Addr: d.proxied, PerClient: true, Goroutines: 2, Keys: hot, Hold: time.Millisecond, TTL: baseTTL},
		{Name: "killed-shared", Addr: d.direct, Goroutines: 3, Keys: hot, Hold: time.Millisecond, TTL: baseTTL},
	}
	if h.cfg.Server == nil {
		specs = append(specs, &workerSpec{Name: "clean-livemutex", Addr: h.lm, LiveMutex: true, Goroutines: 2, Keys: lmKeys, Hold: time.Millisecond})
	}
	if h.sum.Preemptor {
		specs = append(specs, &workerSpec{Name: "preemptor", Addr: d.direct, Goroutines: 1, Keys: hot, Hold: 2 * time.Millisecond, Preempt: preemptGrace},
			// Never killed nor proxied, and holding long enough that a
			// preemptor whose door takes milliseconds a round trip (etcd)
			// finds it holding, and it lives to report the preemption.
			&workerSpec{Name: "slow-holder", Addr: d.direct, Goroutines: 2, Keys: hot, Hold: 400 * time.Millisecond})
	}
	if h.cfg.Skip != "" {
		specs = append(specs, &workerSpec{Name: "skipper", Addr: d.direct, Goroutines: 2, Keys: clean, Hold: time.Millisecond, Skip: h.cfg.Skip})
	}
	return specs, hot
}

// preempts reports whether the broker or server takes the preemptor's
// lock options: lmx's broker does; a server is asked with a Lock, refused
// as an invalid option if it does not.
func (h *harness) preempts(ctx context.Context) (bool, error) {
	if h.cfg.Server == nil {
		return true, nil
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	l, err := h.admin.Lock(pctx, "probe/preempt", lmx.Priority(10), lmx.Preempt(preemptGrace))
	switch {
	case errors.Is(err, lmx.ErrInvalidOption):
		h.logf("chaos: no preemptor: %v", err)
		return false, nil
	case err != nil:
		return false, fmt.Errorf("a Lock with Priority and Preempt: %w", err)
	}
	return true, l.Unlock(pctx)
}

// startWorkers starts the workers of specs and returns the names of those
// the faults may kill.
func (h *harness) startWorkers(specs []*workerSpec) (killable []string, err error) {
	for _, s := range specs {
		s.Checker = h.checkerPath
		h.workers[s.Name] = s
		if !strings.HasPrefix(s.Name, "clean") && s.Name != "skipper" {
			killable = append(killable, s.Name)
		}
		if err := h.startWorker(s); err != nil {
			return nil, err
		}
	}
	return killable, nil
}

// faults injects faults on the seeded schedule for the run's duration.
func (h *harness) faults(ctx context.Context, killable []string, hot []KeySpec) error {
	start := time.Now()
	end := start.Add(h.cfg.Duration)
	var stalledUntil time.Time
	lastRestart, nextFreeze := start, start
	nextLog := start.Add(10 * time.Second)
	for at := start; ; {
		at = at.Add(time.Duration(h.rng.ExpFloat64() * float64(10*time.Millisecond)))
		kind := h.rng.IntN(1000)
		target := h.rng.IntN(1 << 20)
		if at.After(end) || time.Now().After(end) || ctx.Err() != nil {
			break // a slow fault (a restart) may push the schedule past the end
		}
		time.Sleep(time.Until(at))
		now := time.Now()
		if !stalledUntil.IsZero() && now.After(stalledUntil) {
			h.proxy.resume()
			stalledUntil = time.Time{}
		}
		if err := h.checkBroker(); err != nil {
			return err
		}
		h.checkWorkers()
		if h.cfg.Freeze != "" && now.After(nextFreeze) && h.checker.insideClean(h.cfg.Freeze) {
			h.procs[h.cfg.Freeze].freeze(3 * h.timeout / 2)
			nextFreeze = time.Now().Add(h.timeout / 2)
		}
		switch {
		case kind < 600: // ForceUnlock of a key the faults may touch
			fctx, cancel := context.WithTimeout(ctx, time.Second)
			if h.admin.ForceUnlock(fctx, hot[target%len(hot)].Name) == nil {
				h.sum.Forces++
			}
			cancel()
		case kind < 800: // cut the proxied connections
			h.sum.Cuts += h.proxy.cut()
		case kind < 805 && stalledUntil.IsZero(): // stall them past the session timeout
			h.proxy.stall()
			stalledUntil = now.Add(3 * h.timeout / 2)
			h.sum.Stalls++
		case kind < 825: // kill -9 a worker, and start it again
			name := killable[target%len(killable)]
			h.procs[name].kill()
			h.checker.WorkerKilled(name)
			h.sum.Kills++
			if err := h.startWorker(h.workers[name]); err != nil {
				return err
			}
		case kind >= 825 && now.Sub(lastRestart) > 8*time.Second: // kill -9 the broker, and start it again
			if err := h.restartBroker(ctx); err != nil {
				return err
			}
			lastRestart = time.Now()
		}
		if now.After(nextLog) {
			nextLog = nextLog.Add(10 * time.Second)
			s := h.summary()
			h.logf("chaos: %v: cycles %d, kills %d, cuts %d, stalls %d, forces %d, restarts %d, violations %v", now.Sub(start).Round(time.Second), s.Cycles, s.Kills, s.Cuts, s.Stalls, s.Forces, s.Restarts, s.Violations)
		}
	}
	h.proxy.resume()
	return nil
}

// checkWorkers counts workers that exited by themselves, and starts them
// again.
func (h *harness) checkWorkers() {
	for name, p := range h.procs {
		select {
		case <-p.exited:
		default:
			continue
		}
		h.checker.Violation(WorkerFailure, "worker %s exited (%v): %s", name, p.err, p.stderr)
		h.checker.WorkerKilled(name)
		h.startWorker(h.workers[name])
	}
}

// liveness checks that, with the faults over and what they left behind
// gone (the leases of lost sessions and TTLs), every key keeps being
// granted when asked for, the workers stop when asked, and then the broker
// holds and queues nothing.
func (h *harness) liveness(ctx context.Context) error {
	settle := h.timeout + 2*baseTTL
	if h.cfg.Server != nil {
		// etcd gives every lease its whole TTL again when a restart
		// elects its leader, a dead client's too.
		settle = 3 * h.timeout
	}
	time.Sleep(settle)
	const window = 2 * time.Second
	before := h.checker.keyCycles()
	time.Sleep(window)
	after := h.checker.keyCycles()
	for _, k := range Keys {
		if after[k.Name] > before[k.Name] {
			continue
		}
		ictx, cancel := context.WithTimeout(ctx, time.Second)
		ki, err := h.admin.Inspect(ictx, k.Name)
		cancel()
		if err != nil || len(ki.Holders)+len(ki.Waiters) > 0 { // not merely a key nobody asked for
			h.checker.Violation(Liveness, "%s was not granted once in %v, once the faults' leases had ended: %d holders %+v, %d waiters (%v); tokens of the holders inside: %v", k.Name, window, len(ki.Holders), ki.Holders, len(ki.Waiters), err, h.checker.inside(k.Name))
		}
	}
	h.checkWorkers()
	for name, p := range h.procs {
		if !p.stop(20 * time.Second) {
			h.checker.Violation(Liveness, "worker %s did not stop within 20s of being asked: a Lock or Unlock stuck", name)
		} else if p.err != nil {
			h.checker.Violation(WorkerFailure, "worker %s exited (%v): %s", name, p.err, p.stderr)
		}
	}
	h.procs = map[string]*proc{}
	var st lmx.Stats
	stopped := time.Now()
	deadline := stopped.Add(h.timeout + 2*baseTTL + 5*time.Second)
	for {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		var err error
		st, err = h.admin.Stats(sctx)
		cancel()
		if err == nil && st.Holders == 0 && st.Waiters == 0 && st.Keys == 0 && (st.Sessions == 1 || h.cfg.Server != nil) {
			h.logf("chaos: the broker was idle %v after the last worker stopped", time.Since(stopped).Round(time.Millisecond))
			return nil
		}
		if time.Now().After(deadline) {
			h.checker.Violation(Liveness, "with every worker gone, the broker still has %d keys, %d holders, %d waiters, %d sessions (err %v)", st.Keys, st.Holders, st.Waiters, st.Sessions, err)
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// What a broker may keep past its start once every client has gone: heap
// the runtime keeps for itself, and RSS the race detector's shadow memory
// keeps.
const (
	heapSlack = 1 << 20
	rssSlack  = 64 << 20
)

// summary returns the counts so far.
func (h *harness) summary() Summary {
	s := h.sum
	s.Outcomes, s.Released, s.Violations, s.Examples = h.checker.Counts()
	s.Starved = h.checker.Starved()
	s.Cycles = 0
	for o, n := range s.Outcomes {
		if o != Killed {
			s.Cycles += n
		}
	}
	return s
}

// finish settles the checker's excuses (see Checker.Settle), once the
// workers and the broker have stopped, and takes the final counts.
func (h *harness) finish() {
	h.checker.Settle()
	h.sum = h.summary()
}

// openAdmin opens url with lmx.Open, for the harness's own calls.
func openAdmin(ctx context.Context, url string) (adminLocker, error) {
	l, err := lmx.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	a, ok := l.(adminLocker)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("%s opens a %T, which has no ForceUnlock and Stats", url, l)
	}
	return a, nil
}
