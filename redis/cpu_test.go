//go:build unix

package redis_test

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lmx-go/lmx/redis"
	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// cpu is the CPU time, user and system, of this process and of Redis.
type cpu struct{ self, redis time.Duration }

func cpuNow(b *testing.B, rdb *goredis.Client) cpu {
	b.Helper()
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	info, err := rdb.Info(b.Context(), "cpu").Result()
	require.NoError(b, err)
	c := cpu{self: time.Duration(ru.Utime.Nano() + ru.Stime.Nano())}
	for line := range strings.Lines(info) {
		name, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		if name == "used_cpu_sys" || name == "used_cpu_user" {
			sec, err := strconv.ParseFloat(v, 64)
			require.NoError(b, err)
			c.redis += time.Duration(sec * float64(time.Second))
		}
	}
	return c
}

// reportCPU reports the CPU time per cycle of this process (its Lockers)
// and of Redis since start: measures that the machine's load moves less
// than ns/op.
func reportCPU(b *testing.B, rdb *goredis.Client, start cpu) {
	end := cpuNow(b, rdb)
	n := float64(b.N) * 1e3
	b.ReportMetric(float64(end.self-start.self)/n, "go-cpu-µs/op")
	b.ReportMetric(float64(end.redis-start.redis)/n, "redis-cpu-µs/op")
}

// BenchmarkUncontended is a Lock and Unlock of a free key: with -benchmem
// and -cpuprofile, the Go side of the uncontended cycle.
func BenchmarkUncontended(b *testing.B) {
	rdb := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1})
	defer rdb.Close()
	l, err := redis.New(b.Context(), rdb, "bench:")
	require.NoError(b, err)
	defer l.Close()
	start := cpuNow(b, rdb)
	for b.Loop() {
		lease, err := l.Lock(b.Context(), "k")
		require.NoError(b, err)
		require.NoError(b, lease.Unlock(b.Context()))
	}
	reportCPU(b, rdb, start)
}

// BenchmarkHandOff is 20 Lockers taking turns on one key: each Lock but
// the first is granted by the release before it.
func BenchmarkHandOff(b *testing.B) {
	const workers = 20
	var lks []*redis.Locker
	for range workers {
		rdb := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1})
		defer rdb.Close()
		l, err := redis.New(b.Context(), rdb, "bench:")
		require.NoError(b, err)
		defer l.Close()
		lks = append(lks, l)
	}
	admin := goredis.NewClient(&goredis.Options{Addr: addr})
	defer admin.Close()
	var left atomic.Int64
	left.Store(int64(b.N))
	b.ResetTimer()
	start := cpuNow(b, admin)
	var wg sync.WaitGroup
	for _, l := range lks {
		wg.Go(func() {
			for left.Add(-1) >= 0 {
				lease, err := l.Lock(b.Context(), "hot")
				if !assert.NoError(b, err) {
					return
				}
				assert.NoError(b, lease.Unlock(b.Context()))
			}
		})
	}
	wg.Wait()
	reportCPU(b, admin, start)
}
