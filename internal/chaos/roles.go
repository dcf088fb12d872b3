package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lmx-go/lmx"
)

// The harness starts its broker and workers by running its own binary
// again with roleEnv naming the role and specEnv its spec, in JSON.
const (
	roleEnv = "LMX_CHAOS_ROLE"
	specEnv = "LMX_CHAOS_SPEC"
)

// A ServerRole starts a server other than lmx's broker (see Server) on
// TCP address addr, with a second address peer if it needs one, keeping
// its data in dir, and returns how to stop it.
type ServerRole func(dir, addr, peer string) (stop func(), err error)

// Main runs the role the environment names, if any, and reports whether it
// did, with the process's exit code. A test binary's TestMain calls it
// first, so that the harness can run the binary as its broker and workers;
// servers are the ServerRoles its Server configs name.
func Main(servers map[string]ServerRole) (ran bool, code int) {
	role := os.Getenv(roleEnv)
	if role == "" {
		return false, 0
	}
	var err error
	switch role {
	case "broker":
		var s brokerSpec
		if err = json.Unmarshal([]byte(os.Getenv(specEnv)), &s); err == nil {
			err = runBroker(s)
		}
	case "server":
		var s serverSpec
		if err = json.Unmarshal([]byte(os.Getenv(specEnv)), &s); err == nil {
			err = runServer(servers[s.Role], s)
		}
	case "worker":
		var s workerSpec
		if err = json.Unmarshal([]byte(os.Getenv(specEnv)), &s); err == nil {
			err = runWorker(s)
		}
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos %s: %v\n", role, err)
		return true, 2
	}
	return true, 0
}

type brokerSpec struct {
	Unix, TCP, LiveMutex string // LiveMutex: the live-mutex door's Unix socket
	Checker              string // the checker's socket, for the stall watch
	Heartbeat, Timeout   time.Duration
}

// runBroker serves a broker on the spec's addresses until stdin closes. It
// prints "ready" and its health (see selfHealth) once it listens, and its
// health again on each line read from stdin.
func runBroker(s brokerSpec) error {
	b := lmx.NewBroker(lmx.WithHeartbeat(s.Heartbeat, s.Timeout))
	defer b.Close()
	if _, err := b.Listen("unix", s.Unix); err != nil {
		return err
	}
	if _, err := b.Listen("tcp", s.TCP); err != nil {
		return err
	}
	if _, err := b.ListenLiveMutex("unix", s.LiveMutex); err != nil {
		return err
	}
	serveHealth(s.Checker)
	return nil
}

// serveHealth prints "ready" and the process's health (see selfHealth),
// and its health again on each line read from stdin, until stdin closes;
// meanwhile it reports the process's stalls to the checker at checker (see
// watchStalls).
func serveHealth(checker string) {
	ctx, stop := context.WithCancel(context.Background())
	var watch sync.WaitGroup
	defer watch.Wait()
	defer stop()
	watch.Go(func() {
		if err := watchStalls(ctx, checker, brokerName); err != nil {
			fmt.Fprintf(os.Stderr, "chaos: the stall watch failed: %v\n", err)
		}
	})
	fmt.Printf("ready %s\n", selfHealth())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fmt.Println(selfHealth())
	}
}

type serverSpec struct {
	Role, Dir, Addr, Peer string
	Checker               string // the checker's socket, for the stall watch
}

// runServer runs a server other than lmx's broker until stdin closes.
func runServer(role ServerRole, s serverSpec) error {
	if role == nil {
		return fmt.Errorf("no server role %q", s.Role)
	}
	stop, err := role(s.Dir, s.Addr, s.Peer)
	if err != nil {
		return err
	}
	defer stop()
	serveHealth(s.Checker)
	return nil
}

// selfHealth returns the process's goroutines, its RSS and the bytes of its
// heap in use, after a collection that returns what it can to the system.
func selfHealth() string {
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss := 0
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			pages, _ := strconv.Atoi(f[1])
			rss = pages * os.Getpagesize()
		}
	}
	return fmt.Sprintf("%d %d %d", runtime.NumGoroutine(), rss, ms.HeapInuse)
}

type workerSpec struct {
	Name       string
	Addr       string // the broker's address, as Dial takes it
	Checker    string // the checker's socket
	PerClient  bool   // a Client per goroutine, else one Client shared
	Goroutines int
	Keys       []KeySpec
	TTL        time.Duration // when set, a third of the locks of unclean keys take a TTL about this long, and holds may outlast it
	Preempt    time.Duration // when set, locks take a high priority and preempt with this grace
	Hold       time.Duration // the longest hold without a TTL
	Skip       string        // the negative control: this key is entered without a lock
	LiveMutex  bool          // Addr is the live-mutex door's socket: a connection per goroutine, clean keys only
	Seed       uint64
}

// runWorker locks the spec's keys on its goroutines until stdin closes,
// telling the checker of each hold and of the process's stalls.
func runWorker(s workerSpec) error {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() {
		bufio.NewScanner(os.Stdin).Scan() // EOF: the harness says stop
		stop()
	}()
	dial := func() (lmx.Locker, error) { return s.dial(ctx) }
	var shared lmx.Locker
	if !s.PerClient && !s.LiveMutex {
		c, err := dial()
		if err != nil {
			return err
		}
		defer c.Close()
		shared = c
	}
	var wg sync.WaitGroup
	errs := make(chan error, s.Goroutines+1)
	wg.Go(func() {
		if err := watchStalls(ctx, s.Checker, s.Name); err != nil && ctx.Err() == nil {
			errs <- err
			stop()
		}
	})
	for g := range s.Goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := shared
			if c == nil && !s.LiveMutex {
				var err error
				if c, err = dial(); err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				defer c.Close()
			}
			r, err := dialChecker(s.Checker, s.Name)
			if err != nil {
				errs <- err
				return
			}
			defer r.close()
			w := &worker{spec: &s, c: c, r: r, rng: rand.New(rand.NewPCG(s.Seed, uint64(g)))}
			defer func() {
				if w.lm != nil {
					w.lm.nc.Close()
				}
			}()
			if err := w.run(ctx); err != nil {
				errs <- err
				stop()
			}
		}()
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// dial opens a Locker on the spec's address, trying again until it opens
// or ctx ends: the broker may be restarting.
func (s *workerSpec) dial(ctx context.Context) (lmx.Locker, error) {
	for {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		var c lmx.Locker
		var err error
		if strings.HasPrefix(s.Addr, "unix://") || strings.HasPrefix(s.Addr, "tcp://") {
			c, err = lmx.Dial(dctx, s.Addr, lmx.WithReconnectBackoff(5*time.Millisecond, 200*time.Millisecond))
		} else {
			c, err = lmx.Open(dctx, s.Addr)
		}
		cancel()
		if err == nil || ctx.Err() != nil {
			return c, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type worker struct {
	spec *workerSpec
	c    lmx.Locker // on the native door, or any lmx.Open takes
	lm   *lmConn    // on the live-mutex door: nil until dialled, and after a failure
	r    *reporter
	rng  *rand.Rand
}

// run does hold cycles until ctx ends; an error is the checker's line
// failing, or the preemptor's options refused.
func (w *worker) run(ctx context.Context) error {
	for ctx.Err() == nil {
		if err := w.cycle(ctx); err != nil {
			return err
		}
	}
	return nil
}

// cycle locks a key, enters, holds, exits and unlocks, telling the checker.
// An error is the checker's line failing, or the preemptor's options
// refused.
func (w *worker) cycle(ctx context.Context) error {
	s := w.spec
	k := s.Keys[w.rng.IntN(len(s.Keys))]
	var opts []lmx.LockOption
	shared := false
	switch k.Kind {
	case Semaphore:
		opts = append(opts, lmx.Limit(k.Limit))
	case RW:
		if shared = w.rng.IntN(4) != 0; shared {
			opts = append(opts, lmx.Shared())
		}
	}
	hold := time.Duration(w.rng.Int64N(int64(s.Hold) + 1))
	if !k.Clean {
		if s.TTL > 0 && w.rng.IntN(3) == 0 {
			ttl := s.TTL/2 + time.Duration(w.rng.Int64N(int64(s.TTL)))
			opts = append(opts, lmx.TTL(ttl))
			hold = time.Duration(w.rng.Int64N(int64(2 * ttl))) // outlasts it a third of the time
			if w.rng.IntN(4) == 0 {                            // renewed, up to a bound the hold may outlast
				opts = append(opts, lmx.KeepAlive(time.Duration(w.rng.Int64N(int64(2*ttl)))+1))
			}
		}
		if s.Preempt > 0 {
			opts = append(opts, lmx.Priority(10), lmx.Preempt(s.Preempt))
		}
	}
	if k.Name == s.Skip {
		id, err := w.r.enter(k.Name, 0, shared)
		if err != nil {
			return err
		}
		time.Sleep(hold)
		if err := w.r.exit(id); err != nil {
			return err
		}
		return w.r.unlocked(id, Released)
	}
	token, unlock, err := w.lock(ctx, k, opts)
	if err != nil && s.Preempt > 0 && errors.Is(err, lmx.ErrInvalidOption) {
		return fmt.Errorf("a Lock with Priority and Preempt: %w", err) // the harness found them taken
	}
	if err != nil {
		if ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond) // the session is lost, or the broker restarts
		}
		return nil
	}
	id, err := w.r.enter(k.Name, token, shared)
	if err != nil {
		return err
	}
	if hold > 0 {
		time.Sleep(hold)
	}
	if err := w.r.exit(id); err != nil {
		return err
	}
	return w.r.unlocked(id, unlock())
}

// lock locks k through the worker's door and returns the token and how to
// unlock.
func (w *worker) lock(ctx context.Context, k KeySpec, opts []lmx.LockOption) (uint64, func() Outcome, error) {
	if w.spec.LiveMutex {
		return w.lockLiveMutex(k)
	}
	// Some Locks give up soon, while queued or named to follow a lease of
	// their own Client, and some only try.
	wait, lock := 10*time.Second, w.c.Lock
	switch w.rng.IntN(10) {
	case 0:
		wait = time.Duration(w.rng.Int64N(int64(2 * time.Millisecond)))
	case 1:
		lock = w.c.TryLock
	}
	lctx, cancel := context.WithTimeout(ctx, wait)
	l, err := lock(lctx, k.Name, opts...)
	cancel()
	if err != nil {
		return 0, nil, err
	}
	return l.Token(), func() Outcome {
		uctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return outcome(l, l.Unlock(uctx))
	}, nil
}

// lockLiveMutex locks k through the live-mutex door, on a new connection
// if the last one failed.
func (w *worker) lockLiveMutex(k KeySpec) (uint64, func() Outcome, error) {
	if w.lm == nil {
		c, err := dialLiveMutex(w.spec.Addr, fmt.Sprintf("%s-%d", w.spec.Name, w.rng.Uint32()))
		if err != nil {
			return 0, nil, err
		}
		w.lm = c
	}
	c := w.lm
	drop := func() {
		c.nc.Close()
		w.lm = nil
	}
	id, token, err := c.lock(k.Name, max(k.Limit, 1))
	if err != nil {
		drop()
		return 0, nil, err
	}
	return token, func() Outcome {
		o := c.unlock(k.Name, id)
		if o == Lost {
			drop()
		}
		return o
	}, nil
}

// outcome classifies how an Unlock of l went.
func outcome(l *lmx.Lease, err error) Outcome {
	switch {
	case err == nil && errors.Is(l.Err(), lmx.ErrReleased):
		return Released
	case err == nil:
		return BadRelease
	case errors.Is(err, lmx.ErrExpired):
		return Expired
	case errors.Is(err, lmx.ErrForced):
		return Forced
	case errors.Is(err, lmx.ErrPreempted):
		return Preempted
	case errors.Is(err, lmx.ErrSessionLost), errors.Is(err, lmx.ErrClosed):
		return Lost
	case errors.Is(err, lmx.ErrNotHeld):
		return NotHeld
	}
	return Unknown
}
