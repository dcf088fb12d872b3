package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/lmx-go/lmx"
)

// soakLeeway is how much more heap a soak may end with than it started
// with: a broker keeps up to an idle entry and 32 recycled ones a shard.
const soakLeeway = 1 << 20

// A soakPoint is what a soak compares at its start and end.
type soakPoint struct {
	heap       int64 // live heap and stacks after a collection
	goroutines int
}

func soakNow() soakPoint {
	return soakPoint{heap: processMemory(), goroutines: runtime.NumGoroutine()}
}

// runSoak is the soak mode: inCycles lock+unlock cycles on an in-process
// broker, then netCycles through Clients over a Unix socket to a broker in
// this process, both over many keys with random TTLs (none for a third of
// the locks). Each must end with the heap and goroutines it started with.
func runSoak(ctx context.Context, inCycles, netCycles int, stdout, stderr io.Writer) int {
	code := 0
	for _, s := range []struct {
		name   string
		cycles int
		run    func(context.Context, *lmx.Broker, int, func()) error
	}{
		{"in-process", inCycles, soakInproc},
		{"Unix socket", netCycles, soakNet},
	} {
		b := lmx.NewBroker()
		var (
			start soakPoint
			t     time.Time
		)
		err := s.run(ctx, b, s.cycles, func() { start, t = soakNow(), time.Now() })
		elapsed := time.Since(t)
		end := settle(start)
		b.Close()
		if err != nil {
			fmt.Fprintf(stderr, "lmxbench: soak %s: %v\n", s.name, err)
			return 1
		}
		verdict := "ok"
		if end.heap > start.heap+soakLeeway || end.goroutines > start.goroutines {
			verdict, code = "GREW", 1
		}
		fmt.Fprintf(stdout, "soak %s: %d cycles in %v; heap %.2f -> %.2f MiB, goroutines %d -> %d: %s\n",
			s.name, s.cycles, elapsed.Round(time.Millisecond),
			float64(start.heap)/(1<<20), float64(end.heap)/(1<<20), start.goroutines, end.goroutines, verdict)
	}
	return code
}

// settle waits, at most 10 s, for the goroutines and heap to come back to
// start's, as ending sessions' goroutines finish, and returns where they
// are then.
func settle(start soakPoint) soakPoint {
	deadline := time.Now().Add(10 * time.Second)
	for {
		p := soakNow()
		if p.goroutines <= start.goroutines && p.heap <= start.heap+soakLeeway || time.Now().After(deadline) {
			return p
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// soakLock locks a random key of 100,000 with a random TTL, or none.
func soakLock(ctx context.Context, l lmx.Locker, r *rand.Rand) (*lmx.Lease, error) {
	key := fmt.Sprint("soak/", r.IntN(100_000))
	if r.IntN(3) == 0 {
		return l.Lock(ctx, key)
	}
	return l.Lock(ctx, key, lmx.TTL(time.Duration(1+r.IntN(60))*time.Second))
}

// soakWorkers shares cycles among workers, each locking through the
// Locker that locker gives it.
func soakWorkers(ctx context.Context, workers, cycles int, locker func(int) lmx.Locker) error {
	return forEach(workers, workers, func(w int) error {
		r := rand.New(rand.NewPCG(uint64(w), 3))
		l := locker(w)
		for range cycles / workers {
			lease, err := soakLock(ctx, l, r)
			if err != nil {
				return err
			}
			if err := lease.Unlock(ctx); err != nil {
				return err
			}
		}
		return nil
	})
}

// soakInproc soaks b through 8 goroutines; begin marks the start.
func soakInproc(ctx context.Context, b *lmx.Broker, cycles int, begin func()) error {
	begin()
	return soakWorkers(ctx, 8, cycles, func(int) lmx.Locker { return b })
}

// soakNet serves b on a Unix socket and soaks it through 20 Clients, which
// it closes before it returns; begin marks the start, once b listens.
func soakNet(ctx context.Context, b *lmx.Broker, cycles int, begin func()) error {
	dir, err := os.MkdirTemp("", "lmxbench-soak")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	addr, err := b.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		return err
	}
	begin()
	const workers = 20
	clients := make([]*lmx.Client, workers)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range clients {
		if clients[i], err = lmx.Dial(ctx, "unix://"+addr.String()); err != nil {
			return err
		}
	}
	return soakWorkers(ctx, workers, cycles, func(w int) lmx.Locker { return clients[w] })
}
