package lmx_test

import (
	"testing"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/locktest"
)

func newBroker(t testing.TB) lmx.Locker {
	b := lmx.NewBroker()
	t.Cleanup(func() { b.Close() })
	return b
}

func TestBrokerConformance(t *testing.T) {
	locktest.Run(t, newBroker)
}

func TestBrokerConformanceRealTime(t *testing.T) {
	locktest.Run(t, newBroker, locktest.RealTime(0))
}
