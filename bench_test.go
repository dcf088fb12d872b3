package lmx_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lmx-go/lmx"
)

// cycler is what the benchmarks drive: one lock and unlock of key.
type cycler interface {
	cycle(ctx context.Context, key string)
}

// brokerCycler is lmx's in-process broker.
type brokerCycler struct{ b *lmx.Broker }

func (c brokerCycler) cycle(ctx context.Context, key string) {
	l, err := c.b.Lock(ctx, key)
	if err != nil {
		panic(err)
	}
	if err := l.Unlock(ctx); err != nil {
		panic(err)
	}
}

// mutexMap is the baseline: a map of sync.Mutex behind one mutex, created on
// first use and never freed. It has no ids, no tokens, no FIFO, no TTL.
type mutexMap struct {
	mu sync.Mutex
	m  map[string]*sync.Mutex
}

func (c *mutexMap) cycle(_ context.Context, key string) {
	c.mu.Lock()
	m := c.m[key]
	if m == nil {
		m = new(sync.Mutex)
		c.m[key] = m
	}
	c.mu.Unlock()
	m.Lock()
	m.Unlock()
}

// chanMap is the second baseline: a map of one-slot channels, whose waiters
// the runtime queues in arrival order.
type chanMap struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

func (c *chanMap) cycle(_ context.Context, key string) {
	c.mu.Lock()
	ch := c.m[key]
	if ch == nil {
		ch = make(chan struct{}, 1)
		c.m[key] = ch
	}
	c.mu.Unlock()
	ch <- struct{}{}
	<-ch
}

func cyclers() []struct {
	name string
	c    cycler
} {
	return []struct {
		name string
		c    cycler
	}{
		{"lmx", brokerCycler{lmx.NewBroker()}},
		{"mutexmap", &mutexMap{m: map[string]*sync.Mutex{}}},
		{"chanmap", &chanMap{m: map[string]chan struct{}{}}},
	}
}

// BenchmarkUncontended is one goroutine locking and unlocking one key.
func BenchmarkUncontended(b *testing.B) {
	ctx := context.Background()
	for _, c := range cyclers() {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c.c.cycle(ctx, "key")
			}
		})
	}
}

// BenchmarkHot20 is 20 goroutines on one key: every cycle is a hand-off.
// It reports cycles/s and Jain's fairness index over the goroutines' counts
// (1 when every goroutine did as many cycles).
func BenchmarkHot20(b *testing.B) {
	for _, c := range cyclers() {
		b.Run(c.name, func(b *testing.B) {
			runWorkers(b, c.c, 20, func(int, *rand.Rand) string { return "hot" })
		})
	}
}

// BenchmarkKeys200 is 200 goroutines over 1,000 random keys.
func BenchmarkKeys200(b *testing.B) {
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprint("key/", i)
	}
	for _, c := range cyclers() {
		b.Run(c.name, func(b *testing.B) {
			runWorkers(b, c.c, 200, func(_ int, r *rand.Rand) string { return keys[r.IntN(len(keys))] })
		})
	}
}

// runWorkers shares b.N cycles among workers goroutines and reports
// throughput and fairness.
func runWorkers(b *testing.B, c cycler, workers int, key func(int, *rand.Rand) string) {
	b.ReportAllocs()
	ctx := context.Background()
	var next atomic.Int64
	counts := make([]int64, workers)
	var wg sync.WaitGroup
	b.ResetTimer()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for next.Add(1) <= int64(b.N) {
				c.cycle(ctx, key(w, r))
				counts[w]++
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	var sum, sq float64
	for _, n := range counts {
		sum += float64(n)
		sq += float64(n) * float64(n)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cycles/s")
	if sq > 0 {
		b.ReportMetric(sum*sum/(float64(workers)*sq), "fairness")
	}
}

// BenchmarkHeldMemory reports the heap each held lock costs, with and
// without a TTL, for 10^6 keys held at once ("B/held"), and the heap the
// broker still keeps once they have all been released ("kept-MiB"). The keys
// are made beforehand: their bytes are the caller's, not the broker's.
func BenchmarkHeldMemory(b *testing.B) {
	const n = 1_000_000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("key/%07d", i)
	}
	leases := make([]*lmx.Lease, n)
	for _, bc := range []struct {
		name string
		opts []lmx.LockOption
	}{{"plain", nil}, {"ttl", []lmx.LockOption{lmx.TTL(time.Hour)}}} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			var perLock, kept float64
			for b.Loop() {
				br := lmx.NewBroker()
				before := heapInUse()
				for i := range leases {
					l, err := br.Lock(ctx, keys[i], bc.opts...)
					if err != nil {
						b.Fatal(err)
					}
					leases[i] = l
				}
				perLock = float64(heapInUse()-before) / n
				for i, l := range leases {
					if err := l.Unlock(ctx); err != nil {
						b.Fatal(err)
					}
					leases[i] = nil
				}
				kept = float64(heapInUse()-before) / (1 << 20)
				br.Close()
			}
			b.ReportMetric(perLock, "B/held")
			b.ReportMetric(kept, "kept-MiB")
		})
	}
}

func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
