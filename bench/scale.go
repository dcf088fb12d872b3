package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/lmx-go/lmx"
)

// scaleResult is what one scale run measured.
type scaleResult struct {
	sessions        int
	rssBefore       float64 // the broker's VmRSS in MiB with one session
	rssAfter        float64 // and with every session open, each holding a lock
	clientBytes     float64 // this process's heap and stacks a Client, idle
	fifoGrants      int     // the waiters granted, all in queue order
	fifoElapsed     time.Duration
	sessionsReached int // Stats.Sessions with every session open
}

// runScale is the scale mode: a broker child admitting n sessions (and a
// few more), n Clients in this process each holding a lock of its own, the
// broker's RSS from /proc before and after, then every Client but the first
// queued on one key, in turn, and granted in that order when the first
// lets it go.
func runScale(ctx context.Context, cfg config, n int, stdout, stderr io.Writer) int {
	res, err := scale(ctx, cfg, n, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "lmxbench: scale:", err)
		return 1
	}
	perSession := (res.rssAfter - res.rssBefore) * (1 << 20) / float64(n)
	fmt.Fprintf(stdout, "scale: %d sessions open (Stats.Sessions %d), each holding a lock\n", res.sessions, res.sessionsReached)
	fmt.Fprintf(stdout, "broker RSS: %.1f MiB with 1 session, %.1f MiB with %d: %.1f KiB a session (target ≤ 8 KiB)\n",
		res.rssBefore, res.rssAfter, n, perSession/1024)
	fmt.Fprintf(stdout, "client process: %.1f KiB of heap and stacks an idle Client (target ≤ 16 KiB)\n", res.clientBytes/1024)
	fmt.Fprintf(stdout, "FIFO: %d waiters, one a session, granted in queue order in %v\n", res.fifoGrants, res.fifoElapsed.Round(time.Millisecond))
	return 0
}

func scale(ctx context.Context, cfg config, n int, log io.Writer) (scaleResult, error) {
	res := scaleResult{sessions: n}
	// Each session is a descriptor here and one in the broker.
	if err := raiseNoFile(uint64(n) + 1024); err != nil {
		return res, err
	}
	ch, addr, note, err := brokerChild(ctx, cfg, "unix", n+16)
	if err != nil {
		return res, err
	}
	defer ch.stop()
	fmt.Fprintf(log, "scale: broker%s at %s\n", note, addr)
	admin, err := lmx.Dial(ctx, addr)
	if err != nil {
		return res, err
	}
	defer admin.Close()
	if _, err := admin.Stats(ctx); err != nil {
		return res, err
	}
	var ok bool
	if res.rssBefore, ok = ch.rssMiB(); !ok {
		return res, errors.New("cannot read the broker's RSS")
	}
	memBefore := processMemory()
	clients := make([]*lmx.Client, n)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	if err := forEach(n, 32, func(i int) error {
		c, err := lmx.Dial(ctx, addr)
		if err != nil {
			return fmt.Errorf("client %d: %w", i, err)
		}
		clients[i] = c
		_, err = c.Lock(ctx, fmt.Sprint("idle/", i))
		return err
	}); err != nil {
		return res, err
	}
	st, err := admin.Stats(ctx)
	if err != nil {
		return res, err
	}
	res.sessionsReached = st.Sessions
	time.Sleep(time.Second) // let both sides settle into idleness
	res.clientBytes = float64(processMemory()-memBefore) / float64(n)
	if res.rssAfter, ok = ch.rssMiB(); !ok {
		return res, errors.New("cannot read the broker's RSS")
	}
	fmt.Fprintf(log, "scale: %d sessions open; queueing them on one key\n", n)
	start := time.Now()
	res.fifoGrants, err = fifo(ctx, admin, clients)
	res.fifoElapsed = time.Since(start)
	return res, err
}

// fifo makes clients[0] hold a key, queues every other client on it in
// turn, waiting to see each queued before the next asks, and then checks
// that they are granted in that order. It returns the grants seen.
func fifo(ctx context.Context, admin *lmx.Client, clients []*lmx.Client) (int, error) {
	const key = "fifo"
	first, err := clients[0].Lock(ctx, key)
	if err != nil {
		return 0, err
	}
	var (
		mu    sync.Mutex
		order []int
		wg    sync.WaitGroup
		errs  = make(chan error, len(clients))
	)
	for i := 1; i < len(clients); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := clients[i].Lock(ctx, key)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			if err := l.Unlock(ctx); err != nil {
				errs <- err
			}
		}()
		for {
			st, err := admin.Stats(ctx)
			if err != nil {
				return 0, err
			}
			if st.Waiters >= i {
				break
			}
			select {
			case err := <-errs:
				return 0, err
			case <-ctx.Done():
				return 0, ctx.Err()
			default:
				runtime.Gosched()
			}
		}
	}
	if err := first.Unlock(ctx); err != nil {
		return 0, err
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	if len(order) != len(clients)-1 {
		return 0, fmt.Errorf("%d grants of %d waiters", len(order), len(clients)-1)
	}
	for i, got := range order {
		if got != i+1 {
			return 0, fmt.Errorf("grant %d went to the waiter queued %dth", i+1, got)
		}
	}
	return len(order), nil
}

// forEach calls f(0..n-1), at most par at once, and returns the first error.
func forEach(n, par int, f func(int) error) error {
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		sem   = make(chan struct{}, par)
	)
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := f(i); err != nil {
				once.Do(func() { first = err })
			}
		}()
	}
	wg.Wait()
	return first
}

// raiseNoFile raises this process's descriptor limit, soft and hard, to at
// least n; children inherit it.
func raiseNoFile(n uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= n {
		return nil
	}
	lim.Cur, lim.Max = n, max(lim.Max, n)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raising the descriptor limit to %d: %w", n, err)
	}
	return nil
}

// processMemory is this process's live heap and goroutine stacks, after a
// collection.
func processMemory() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc + ms.StackInuse)
}
