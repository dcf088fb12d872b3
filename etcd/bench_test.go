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
