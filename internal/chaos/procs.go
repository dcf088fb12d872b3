package chaos

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The harness's processes: starting the broker and the workers as children
// of the test binary, killing and restarting them, and the broker's health.

// A proc is a broker or worker process of the run.
type proc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Reader
	stderr *tailBuffer
	exited chan struct{}
	err    error // its exit, once exited is closed
}

// tailBuffer keeps the last 4 KiB written to it.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.b))
}

// start runs the binary in role with spec.
func (h *harness) start(role string, spec any) (*proc, error) {
	js, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(h.cfg.Exe)
	cmd.Env = append(os.Environ(), roleEnv+"="+role, specEnv+"="+string(js), "GORACE=halt_on_error=1")
	p := &proc{cmd: cmd, stderr: new(tailBuffer), exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p.out = bufio.NewReader(stdout)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	if role == "worker" { // a worker says nothing the harness reads
		go io.Copy(io.Discard, p.out)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// kill kills p with SIGKILL and waits for it.
func (p *proc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// freeze stops p (SIGSTOP) for d, as a starved process would be, and
// lets it go on.
func (p *proc) freeze(d time.Duration) {
	p.cmd.Process.Signal(syscall.SIGSTOP)
	time.Sleep(d)
	p.cmd.Process.Signal(syscall.SIGCONT)
}

// stop asks p to stop by closing its stdin, and waits up to d for it.
func (p *proc) stop(d time.Duration) bool {
	p.stdin.Close()
	select {
	case <-p.exited:
		return true
	case <-time.After(d):
		p.kill()
		return false
	}
}

// startBroker starts the broker and waits until it listens.
func (h *harness) startBroker() error {
	var spec any = brokerSpec{Unix: h.unix, TCP: h.tcp, LiveMutex: h.lm, Checker: h.checkerPath, Heartbeat: heartbeat, Timeout: sessionTimeout}
	role := "broker"
	if srv := h.cfg.Server; srv != nil {
		spec, role = serverSpec{Role: srv.Role, Dir: filepath.Join(h.cfg.Dir, "server"), Addr: h.tcp, Peer: h.peer, Checker: h.checkerPath}, "server"
	}
	p, err := h.start(role, spec)
	if err != nil {
		return err
	}
	line, err := p.out.ReadString('\n')
	var hl health
	if err == nil {
		hl, err = parseHealth(strings.TrimPrefix(line, "ready "))
	}
	if err != nil {
		p.kill()
		return fmt.Errorf("broker did not start: %v: %s", err, p.stderr)
	}
	if h.broker == nil {
		h.base = hl
	}
	if h.broker != nil && h.cfg.Server != nil {
		// A restarted server is ready when it serves: etcd may answer
		// before it has its leader.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for ctx.Err() == nil {
			if _, err := h.admin.Stats(ctx); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	h.broker = p
	return nil
}

// health is what a broker process says of itself (see selfHealth).
type health struct{ goroutines, rss, heap int }

func parseHealth(line string) (hl health, err error) {
	_, err = fmt.Sscanf(line, "%d %d %d", &hl.goroutines, &hl.rss, &hl.heap)
	return hl, err
}

func (hl health) String() string {
	return fmt.Sprintf("%d goroutines, RSS %.1f MiB, heap in use %.1f MiB", hl.goroutines, float64(hl.rss)/(1<<20), float64(hl.heap)/(1<<20))
}

// brokerHealth asks the broker for its health.
func (h *harness) brokerHealth() (health, error) {
	if _, err := io.WriteString(h.broker.stdin, "health\n"); err != nil {
		return health{}, err
	}
	line, err := h.broker.out.ReadString('\n')
	if err != nil {
		return health{}, err
	}
	return parseHealth(line)
}

// startWorker starts the worker of spec, with a seed of its own per start.
func (h *harness) startWorker(s *workerSpec) error {
	h.starts++
	spec := *s
	spec.Seed = h.cfg.Seed*1000003 + uint64(h.starts)
	p, err := h.start("worker", spec)
	if err != nil {
		return err
	}
	h.procs[s.Name] = p
	return nil
}

// restartBroker kills the broker with SIGKILL, starts it again on the same
// addresses, and checks that its first token is above every token before.
func (h *harness) restartBroker(ctx context.Context) error {
	h.broker.kill()
	before := h.checker.BrokerRestarted()
	h.sum.Restarts++
	if err := h.startBroker(); err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	l, err := h.admin.Lock(pctx, "probe/restart")
	if err != nil {
		return fmt.Errorf("the restarted broker grants nothing: %w", err)
	}
	if l.Token() <= before {
		h.checker.Violation(RestartToken, "the restarted broker's token %d is not above %d, the largest before", l.Token(), before)
	}
	return l.Unlock(pctx)
}

// checkBroker counts a broker that exited by itself, and starts it again.
func (h *harness) checkBroker() error {
	select {
	case <-h.broker.exited:
	default:
		return nil
	}
	h.checker.Violation(BrokerDied, "the broker exited by itself (%v): %s", h.broker.err, h.broker.stderr)
	h.checker.BrokerRestarted()
	return h.startBroker()
}

// brokerBack checks that, with every client gone, the broker's goroutines,
// heap and RSS are back to what they were when it started.
func (h *harness) brokerBack() {
	deadline := time.Now().Add(10 * time.Second)
	for {
		hl, err := h.brokerHealth()
		if err != nil {
			h.checker.Violation(BrokerLeak, "the broker does not answer: %v", err)
			return
		}
		h.logf("chaos: broker at the end: %v; at the start: %v", hl, h.base)
		if hl.goroutines <= h.base.goroutines && hl.heap <= h.base.heap+heapSlack && hl.rss <= h.base.rss+rssSlack {
			return
		}
		if time.Now().After(deadline) {
			h.checker.Violation(BrokerLeak, "the broker at the end: %v; at the start: %v", hl, h.base)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
