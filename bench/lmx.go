package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lmx-go/lmx"
)

var services = []service{
	{name: "lmx-inproc", smoke: true, start: startInproc, cycleScale: inprocScale},
	{name: "lmx-unix", smoke: true, start: func(ctx context.Context, cfg config) (running, error) { return startLMXChild(ctx, cfg, "unix", false) }},
	{name: "lmx-tcp", smoke: false, start: func(ctx context.Context, cfg config) (running, error) { return startLMXChild(ctx, cfg, "tcp", false) }},
	{name: "lmx-unix-clients", smoke: false, start: func(ctx context.Context, cfg config) (running, error) { return startLMXChild(ctx, cfg, "unix", true) }},
	{name: "echo-unix", smoke: true, start: func(ctx context.Context, _ config) (running, error) { return startEcho(ctx, "unix", false) }},
	{name: "echo-tcp", smoke: false, start: func(ctx context.Context, _ config) (running, error) { return startEcho(ctx, "tcp", false) }},
	{name: "echo-pipelined-unix", smoke: true, start: func(ctx context.Context, _ config) (running, error) { return startEcho(ctx, "unix", true) }},
	{name: "redis-redislock", smoke: false, start: startRedislock},
	{name: "redis-redsync", smoke: false, start: startRedsync},
	{name: "lmx-redis", smoke: false, start: startLMXRedis},
	{name: "live-mutex", smoke: false, start: startLiveMutex},
	{name: "etcd", start: startEtcdMutex, maxCycles: etcdMaxCycles},
	{name: "lmx-etcd", start: func(ctx context.Context, cfg config) (running, error) { return startLMXEtcd(ctx, cfg, true) }, maxCycles: etcdMaxCycles},
	{name: "lmx-etcd-shared", start: func(ctx context.Context, cfg config) (running, error) { return startLMXEtcd(ctx, cfg, false) }, maxCycles: etcdMaxCycles},
}

// lmxWorker does cycles through a Locker, shared by all workers unless it
// is the worker's own Client.
type lmxWorker struct {
	l      lmx.Locker
	own    *lmx.Client   // closed with the worker
	n      int64         // cycles done
	served *atomic.Int64 // if not nil, gets n at close: no shared write per cycle
}

func (w *lmxWorker) cycle(ctx context.Context, key string) (time.Duration, error) {
	t := time.Now()
	l, err := w.l.Lock(ctx, key)
	if err != nil {
		return 0, err
	}
	d := time.Since(t)
	if err := l.Unlock(ctx); err != nil {
		return 0, err
	}
	w.n++
	return d, nil
}

func (w *lmxWorker) close() {
	if w.served != nil {
		w.served.Add(w.n)
	}
	if w.own != nil {
		w.own.Close()
	}
}

type inproc struct{ b *lmx.Broker }

// inprocScale makes an in-process run last long enough (0.2 to 2 s here)
// for the scheduler to have run every worker many times: 10,000 in-process
// cycles take about 10 ms.
const inprocScale = 50

func startInproc(context.Context, config) (running, error) { return inproc{lmx.NewBroker()}, nil }

func (s inproc) newWorker(context.Context, int) (worker, error) { return &lmxWorker{l: s.b}, nil }
func (inproc) rss() string                                      { return "" }
func (s inproc) close()                                         { s.b.Close() }

// A child is a server this command started in another process: this binary
// again, redis-server or node. It is stopped by closing its stdin (which
// the children this command writes watch) and SIGTERM, then killed.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	dir   string // a temporary directory removed at stop, or ""
	done  chan struct{}
	once  sync.Once
}

// startChild starts cmd and waits, at most 15 s, for ready to accept a line
// of its stdout (or for ready to be nil and probe to succeed). dir, if not
// "", is removed when the child stops, or at once if it fails to start.
func startChild(ctx context.Context, cmd *exec.Cmd, dir string, ready func(line string) bool, probe func() error) (_ *child, err error) {
	defer func() {
		if err != nil && dir != "" {
			os.RemoveAll(dir)
		}
	}()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	var stderrMu sync.Mutex
	cmd.Stderr = writerFunc(func(p []byte) (int, error) {
		stderrMu.Lock()
		defer stderrMu.Unlock()
		if stderr.Len() < 4096 {
			stderr.Write(p)
		}
		return len(p), nil
	})
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, stdin: stdin, dir: dir, done: make(chan struct{})}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
		cmd.Wait()
		close(c.done)
	}()
	fail := func(err error) (*child, error) {
		c.stop()
		stderrMu.Lock()
		defer stderrMu.Unlock()
		if s := strings.TrimSpace(stderr.String()); s != "" {
			err = fmt.Errorf("%w: %s", err, s)
		}
		return nil, err
	}
	deadline := time.NewTimer(15 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-deadline.C:
			return fail(errors.New("not ready after 15s"))
		case line, ok := <-lines:
			if !ok {
				lines = nil
				continue
			}
			if ready != nil && ready(line) {
				return c, nil
			}
		case <-c.done:
			return fail(fmt.Errorf("%s exited", filepath.Base(cmd.Path)))
		case <-tick.C:
			if ready == nil && probe() == nil {
				return c, nil
			}
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// rss is the child's VmRSS from /proc, "?" if it cannot be read.
func (c *child) rss() string {
	mib, ok := c.rssMiB()
	if !ok {
		return "?"
	}
	return fmt.Sprintf("%.1f MiB", mib)
}

// rssMiB is the child's VmRSS in MiB, from /proc.
func (c *child) rssMiB() (float64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kb, err := strconv.Atoi(f[0])
				if err == nil {
					return float64(kb) / 1024, true
				}
			}
		}
	}
	return 0, false
}

func (c *child) stop() {
	c.once.Do(func() {
		c.stdin.Close()
		c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			c.cmd.Process.Kill()
			<-c.done
		}
		if c.dir != "" {
			os.RemoveAll(c.dir)
		}
	})
}

// childAddr returns a listening URL for network: a socket in a new
// temporary directory, or 127.0.0.1 with a port the kernel picks.
func childAddr(network string) (url, dir string, err error) {
	if network == "unix" {
		dir, err = os.MkdirTemp("", "lmxbench")
		if err != nil {
			return "", "", err
		}
		return "unix://" + filepath.Join(dir, "s"), dir, nil
	}
	return "tcp://127.0.0.1:0", "", nil
}

// serverChild starts the server that cmd makes for a listening URL on
// network, and returns the URL it prints in its "ready URL" line.
func serverChild(ctx context.Context, network string, cmd func(url string) *exec.Cmd) (*child, string, error) {
	url, dir, err := childAddr(network)
	if err != nil {
		return nil, "", err
	}
	var addr string
	c, err := startChild(ctx, cmd(url), dir, func(line string) bool {
		a, ok := strings.CutPrefix(line, "ready ")
		addr = a
		return ok
	}, nil)
	if err != nil {
		return nil, "", err
	}
	return c, addr, nil
}

// selfChild starts this binary as a server of kind (brokerEnv or echoEnv)
// on network, with the environment variables extra besides.
func selfChild(ctx context.Context, env, network string, extra ...string) (*child, string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	return serverChild(ctx, network, func(url string) *exec.Cmd {
		cmd := exec.Command(exe)
		cmd.Env = append(append(os.Environ(), env+"="+url), extra...)
		return cmd
	})
}

// maxSessionsEnv passes a child broker its session limit.
const maxSessionsEnv = "LMXBENCH_MAX_SESSIONS"

// brokerMaxSessions is the session limit a child broker was started with,
// or 0 for the default.
func brokerMaxSessions() int {
	n, _ := strconv.Atoi(os.Getenv(maxSessionsEnv))
	return n
}

// brokerChild starts a broker process listening on network, admitting
// maxSessions sessions (0: the default): the lean broker, or this binary
// when it cannot be built, which note then says.
func brokerChild(ctx context.Context, cfg config, network string, maxSessions int) (ch *child, addr, note string, err error) {
	if bin := cfg.broker.binary(ctx); bin != "" {
		ch, addr, err = serverChild(ctx, network, func(url string) *exec.Cmd {
			return exec.Command(bin, "-listen", url, "-max-sessions", strconv.Itoa(maxSessions))
		})
		return ch, addr, "", err
	}
	ch, addr, err = selfChild(ctx, brokerEnv, network, maxSessionsEnv+"="+strconv.Itoa(maxSessions))
	return ch, addr, " (lmxbench binary)", err
}

type lmxNet struct {
	c         *lmx.Client
	addr      string
	perWorker bool // each worker dials a Client of its own
	ch        *child
	served    atomic.Int64
	note      string // about the broker binary
}

// A leanBroker is cmd/lmxbroker built once into a temporary directory, for
// one run of the matrix, so that the broker whose RSS is measured does not
// carry this binary's dependencies.
type leanBroker struct {
	once sync.Once
	dir  string
	path string // "" when it cannot be built (no go command, not run from the bench module)
}

// binary builds the broker the first time it is called, and returns its
// path, or "" if it cannot be built; this binary then serves as the broker.
func (lb *leanBroker) binary(ctx context.Context) string {
	lb.once.Do(func() {
		if _, err := os.Stat(filepath.Join("cmd", "lmxbroker", "main.go")); err != nil {
			return
		}
		dir, err := os.MkdirTemp("", "lmxbench-bin")
		if err != nil {
			return
		}
		path := filepath.Join(dir, "lmxbroker")
		bctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if err := exec.CommandContext(bctx, "go", "build", "-o", path, "./cmd/lmxbroker").Run(); err != nil {
			os.RemoveAll(dir)
			return
		}
		lb.dir, lb.path = dir, path
	})
	return lb.path
}

// remove removes what binary built.
func (lb *leanBroker) remove() {
	if lb.dir != "" {
		os.RemoveAll(lb.dir)
	}
}

// startLMXChild starts a broker process listening on network. Its workers
// share one Client, or, with perWorker, each has its own: hand-offs between
// them then cross the broker.
func startLMXChild(ctx context.Context, cfg config, network string, perWorker bool) (running, error) {
	ch, addr, note, err := brokerChild(ctx, cfg, network, 0)
	if err != nil {
		return nil, err
	}
	c, err := lmx.Dial(ctx, addr)
	if err != nil {
		ch.stop()
		return nil, err
	}
	return &lmxNet{c: c, addr: addr, perWorker: perWorker, ch: ch, note: note}, nil
}

func (s *lmxNet) newWorker(ctx context.Context, _ int) (worker, error) {
	if !s.perWorker {
		return &lmxWorker{l: s.c, served: &s.served}, nil
	}
	c, err := lmx.Dial(ctx, s.addr)
	if err != nil {
		return nil, err
	}
	return &lmxWorker{l: c, own: c, served: &s.served}, nil
}

func (s *lmxNet) rss() string {
	return fmt.Sprintf("%s after %d cycles%s", s.ch.rss(), s.served.Load(), s.note)
}

func (s *lmxNet) memory() (float64, int64, bool) {
	mib, ok := s.ch.rssMiB()
	return mib, s.served.Load(), ok
}

func (s *lmxNet) close() {
	s.c.Close()
	s.ch.stop()
}

// dialURL dials a "unix://path" or "tcp://host:port" URL.
func dialURL(ctx context.Context, url string) (net.Conn, error) {
	network, address, _ := strings.Cut(url, "://")
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}
