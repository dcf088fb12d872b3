package redis_test

import (
	"log"
	"os"
	"testing"

	"github.com/lmx-go/lmx/redis/internal/redistest"
)

// addr is the address of the redis-server TestMain runs.
var addr string

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	srv, err := redistest.Start("127.0.0.1:0", "")
	if err != nil {
		log.Print(err)
		os.Exit(1)
	}
	addr = srv.Addr
	code := m.Run()
	srv.Stop()
	os.Exit(code)
}
