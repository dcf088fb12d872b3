// Package chaostest runs lmx's chaos harness (internal/chaos) against the
// Redis backend: a redis-server child of a process of its own, both killed
// with SIGKILL and started again on the server's append-only file as the
// harness's broker fault.
package chaostest

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/lmx-go/lmx/internal/chaos"
	"github.com/lmx-go/lmx/redis/internal/redistest"

	_ "github.com/lmx-go/lmx/redis" // redis:// for lmx.Open
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
// expire and are forced, and Redis itself is killed and restarted. The
// -chaos.duration (20 s by default) and -chaos.seed flags work as for the
// broker's TestChaos.
func TestChaosRedis(t *testing.T) {
	chaos.RunTest(t, &chaos.Server{
		Role: "redis",
		URL: func(addr string) string {
			return fmt.Sprintf("redis://%s/0?prefix=chaos:&session_ttl=%v", addr, sessionTTL)
		},
		SessionTimeout: sessionTTL,
	}, 20*time.Second)
}
