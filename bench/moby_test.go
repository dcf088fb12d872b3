package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/moby/locker"
)

// The in-process peer a Go user picks today is Docker's named mutex,
// github.com/moby/locker: it frees idle names, but has no order, ids, tokens
// or TTL. These benchmarks run lmx's Broker, it and a map of sync.Mutex in
// turns, chunk by chunk, in one benchmark, so that the ratio ("x-moby",
// moby's ns a cycle over lmx's) compares the two under the same load.

// cycleFunc does one lock and unlock of key.
type cycleFunc func(key string)

func lmxCycle(b *lmx.Broker) cycleFunc {
	ctx := context.Background()
	return func(key string) {
		l, err := b.Lock(ctx, key)
		if err != nil {
			panic(err)
		}
		if err := l.Unlock(ctx); err != nil {
			panic(err)
		}
	}
}

func mobyCycle(l *locker.Locker) cycleFunc {
	return func(key string) {
		l.Lock(key)
		if err := l.Unlock(key); err != nil {
			panic(err)
		}
	}
}

// mutexMapCycle is the floor both are measured beside: a map of
// sync.Mutex behind one mutex, never freed, with no order.
func mutexMapCycle() cycleFunc {
	var mu sync.Mutex
	m := make(map[string]*sync.Mutex)
	return func(key string) {
		mu.Lock()
		l := m[key]
		if l == nil {
			l = new(sync.Mutex)
			m[key] = l
		}
		mu.Unlock()
		l.Lock()
		l.Unlock()
	}
}

// vsMoby runs chunks of cycles through lmx, moby/locker and a map of
// sync.Mutex in turns, each chunk shared by workers goroutines picking keys
// with key, the order of the turns rotating, and reports the three costs
// and moby's over lmx's.
func vsMoby(b *testing.B, workers, chunk int, key func(*rand.Rand) string) {
	br := lmx.NewBroker()
	defer br.Close()
	impls := []cycleFunc{lmxCycle(br), mobyCycle(locker.New()), mutexMapCycle()}
	var spent [3]time.Duration
	cycles := 0
	for b.Loop() {
		for j := range impls {
			i := (j + cycles/chunk) % len(impls)
			spent[i] += runChunk(impls[i], workers, chunk, key)
		}
		cycles += chunk
	}
	ns := func(i int) float64 { return float64(spent[i].Nanoseconds()) / float64(cycles) }
	b.ReportMetric(ns(0), "lmx-ns/cycle")
	b.ReportMetric(ns(1), "moby-ns/cycle")
	b.ReportMetric(ns(2), "mutexmap-ns/cycle")
	b.ReportMetric(ns(1)/ns(0), "x-moby")
}

// runChunk does n cycles of c shared among workers goroutines, and returns
// how long they took.
func runChunk(c cycleFunc, workers, n int, key func(*rand.Rand) string) time.Duration {
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		share := n / workers
		if w < n%workers {
			share++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 2))
			for range share {
				c(key(r))
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
}

// BenchmarkVsMoby is DESIGN.md's moby/locker row: one worker on one key
// (target ≥ 1.2x), and 200 goroutines over 1,000 keys (target ≥ 3x).
func BenchmarkVsMoby(b *testing.B) {
	b.Run("hot1", func(b *testing.B) {
		vsMoby(b, 1, 10_000, func(*rand.Rand) string { return "hot" })
	})
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprint("key/", i)
	}
	b.Run("keys200", func(b *testing.B) {
		vsMoby(b, 200, 100_000, func(r *rand.Rand) string { return keys[r.IntN(len(keys))] })
	})
}
