// Package chaostest runs lmx's chaos harness (internal/chaos) against the
// Redis backend: a redis-server child of a process of its own, both killed
// with SIGKILL and started again on the server's append-only file as the
// harness's broker fault.
package chaostest

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/lmx-go/lmx/internal/chaos"
	"github.com/lmx-go/lmx/redis/internal/redistest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	_ "github.com/lmx-go/lmx/redis" // redis:// for lmx.Open
)

var (
	duration = flag.Duration("chaos.duration", 20*time.Second, "how long TestChaosRedis injects faults")
	seed     = flag.Uint64("chaos.seed", 1, "TestChaosRedis's seed; 0 picks one at random")
)

// sessionTTL is the Lockers' session TTL.
const sessionTTL = time.Second

func TestMain(m *testing.M) {
	if ran, code := chaos.Main(map[string]chaos.ServerRole{"redis": startRedis}); ran {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// startRedis starts a redis-server on addr that keeps its data in dir, and
// dies with this process: the role's goroutine keeps the thread that
// started it (see redistest.Start).
func startRedis(dir, addr, _ string) (func(), error) {
	runtime.LockOSThread()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	srv, err := redistest.Start(addr, dir)
	if err != nil {
		return nil, err
	}
	return srv.Stop, nil
}

// No double grant, no overlap on clean keys, tokens in order and keys free
// after the faults, through the Redis backend, while workers are killed,
// their connections to Redis cut and stalled past the session TTL, leases
// expire and are forced, and Redis itself is killed and restarted.
func TestChaosRedis(t *testing.T) {
	s := *seed
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	exe, err := os.Executable()
	require.NoError(t, err)
	dir, err := os.MkdirTemp("", "chaos")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	srv := &chaos.Server{
		Role: "redis",
		URL: func(addr string) string {
			return fmt.Sprintf("redis://%s/0?prefix=chaos:&session_ttl=%v", addr, sessionTTL)
		},
		SessionTimeout: sessionTTL,
	}
	sum, err := chaos.Run(t.Context(), chaos.Config{Duration: *duration, Seed: s, Dir: dir, Exe: exe, Log: testLog{t}, Server: srv})
	require.NoError(t, err)
	t.Log(sum)
	assert.False(t, sum.Failed(), "violations (replay with -chaos.seed=%d):\n%v", s, sum)
	assert.Positive(t, sum.Cycles)
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(string(p))
	return len(p), nil
}
