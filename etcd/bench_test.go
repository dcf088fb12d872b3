package etcd_test

import (
	"context"
	"fmt"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lmx-go/lmx/etcd"
	"github.com/lmx-go/lmx/internal/proccost"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// BenchmarkHotKey measures hand-off on one key with 20 goroutines, each
// with its own session on one client (as 20 processes would have), for the
// lmx etcd Locker and, in the same run, etcd's concurrency.Mutex. One op is
// one cycle (lock + unlock); with 20 waiters the key is always wanted, so
// the time per cycle is the hand-off latency.
func BenchmarkHotKey(b *testing.B) {
	const workers = 20
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()

	b.Run("lmx", func(b *testing.B) {
		pfx := fmt.Sprintf("bench/lmx/%d", prefixes.Add(1))
		cycles := make([]func() error, workers)
		for i := range cycles {
			lk, err := etcd.New(ctx, cli, pfx)
			if err != nil {
				b.Fatal(err)
			}
			defer lk.Close()
			cycles[i] = func() error {
				l, err := lk.Lock(ctx, "hot")
				if err != nil {
					return err
				}
				return l.Unlock(ctx)
			}
		}
		hotKey(b, cycles)
	})

	b.Run("concurrency.Mutex", func(b *testing.B) {
		pfx := fmt.Sprintf("bench/mutex/%d/hot", prefixes.Add(1))
		cycles := make([]func() error, workers)
		for i := range cycles {
			s, err := concurrency.NewSession(cli, concurrency.WithTTL(5))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			m := concurrency.NewMutex(s, pfx)
			cycles[i] = func() error {
				if err := m.Lock(ctx); err != nil {
					return err
				}
				return m.Unlock(ctx)
			}
		}
		hotKey(b, cycles)
	})
}

// hotKey runs b.N cycles over the workers and reports cycles/s, Jain's
// fairness of the cycles per worker, and the worst time one cycle took.
func hotKey(b *testing.B, cycles []func() error) {
	var left atomic.Int64
	left.Store(int64(b.N))
	counts := make([]int, len(cycles))
	worst := make([]time.Duration, len(cycles))
	var wg sync.WaitGroup
	errs := make(chan error, len(cycles))
	b.ResetTimer()
	start := time.Now()
	for i, cycle := range cycles {
		wg.Go(func() {
			for left.Add(-1) >= 0 {
				t := time.Now()
				if err := cycle(); err != nil {
					errs <- err
					return
				}
				worst[i] = max(worst[i], time.Since(t))
				counts[i]++
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	var sum, sq float64
	for _, c := range counts {
		sum += float64(c)
		sq += float64(c) * float64(c)
	}
	sort.Slice(worst, func(i, j int) bool { return worst[i] > worst[j] })
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "cycles/s")
	b.ReportMetric(sum*sum/(float64(len(counts))*math.Max(sq, 1)), "fairness")
	b.ReportMetric(float64(worst[0].Microseconds())/1000, "worst-ms")
}

// BenchmarkOwnKeys is 20 goroutines, each locking and unlocking a key of its
// own through a client and a Locker (or a Session and a concurrency.Mutex)
// of its own, as 20 processes would: the uncontended cycle, where both ask
// etcd two requests. Beside cycles/s it reports what a cycle costs whatever
// the machine's load: the process's CPU time (the embedded etcd server's
// included) and its read and write system calls.
func BenchmarkOwnKeys(b *testing.B) {
	const workers = 20
	ctx := context.Background()
	newClient := func(b *testing.B) *clientv3.Client {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cli.Close() })
		return cli
	}
	b.Run("lmx", func(b *testing.B) {
		pfx := fmt.Sprintf("bench/own/%d", prefixes.Add(1))
		cycles := make([]func() error, workers)
		for i := range cycles {
			lk, err := etcd.New(ctx, newClient(b), pfx)
			if err != nil {
				b.Fatal(err)
			}
			defer lk.Close()
			key := fmt.Sprint("k", i)
			cycles[i] = func() error {
				l, err := lk.Lock(ctx, key)
				if err != nil {
					return err
				}
				return l.Unlock(ctx)
			}
		}
		defer proccost.Report(b, "cycle")()
		hotKey(b, cycles)
	})
	b.Run("concurrency.Mutex", func(b *testing.B) {
		pfx := fmt.Sprintf("bench/own-mutex/%d/", prefixes.Add(1))
		cycles := make([]func() error, workers)
		for i := range cycles {
			s, err := concurrency.NewSession(newClient(b), concurrency.WithTTL(5))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			m := concurrency.NewMutex(s, fmt.Sprint(pfx, i))
			cycles[i] = func() error {
				if err := m.Lock(ctx); err != nil {
					return err
				}
				return m.Unlock(ctx)
			}
		}
		defer proccost.Report(b, "cycle")()
		hotKey(b, cycles)
	})
}
