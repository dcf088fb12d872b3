package lmx_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/locktest"
	"github.com/stretchr/testify/require"
)

// pipeClient returns a client talking to a new broker over net.Pipe, which a
// synctest bubble can hold.
func pipeClient(t testing.TB, opts ...lmx.BrokerOption) (*lmx.Client, *lmx.Broker) {
	b := lmx.NewBroker(opts...)
	dial := func(context.Context, string, string) (net.Conn, error) {
		c1, c2 := net.Pipe()
		b.ServeConn(c2)
		return c1, nil
	}
	c, err := lmx.Dial(context.Background(), "pipe:0", lmx.WithDialer(dial))
	require.NoError(t, err)
	t.Cleanup(func() {
		c.Close()
		b.Close()
	})
	return c, b
}

// listen starts a broker listening on network and returns its address as
// Dial takes it.
func listen(t testing.TB, network string, opts ...lmx.BrokerOption) (string, *lmx.Broker) {
	b := lmx.NewBroker(opts...)
	t.Cleanup(func() { b.Close() })
	switch network {
	case "unix":
		path := socketPath(t)
		_, err := b.Listen("unix", path)
		require.NoError(t, err)
		return "unix://" + path, b
	default:
		addr, err := b.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		return "tcp://" + addr.String(), b
	}
}

// socketPath returns a short path for a Unix socket: test temp dirs can pass
// the 108-byte limit of socket paths.
func socketPath(t testing.TB) string {
	dir, err := os.MkdirTemp("", "lmx")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "lmx.sock")
}

func dialer(network string) locktest.Factory {
	return func(t testing.TB) lmx.Locker {
		addr, _ := listen(t, network)
		c, err := lmx.Dial(context.Background(), addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
}

func TestClientConformance(t *testing.T) {
	t.Run("Pipe", func(t *testing.T) {
		locktest.Run(t, func(t testing.TB) lmx.Locker {
			c, _ := pipeClient(t)
			return c
		})
	})
	t.Run("TCP", func(t *testing.T) { locktest.Run(t, dialer("tcp"), locktest.RealTime(0)) })
	t.Run("Unix", func(t *testing.T) { locktest.Run(t, dialer("unix"), locktest.RealTime(0)) })
}

func TestClientPing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, _ := pipeClient(t)
		require.NoError(t, c.Ping(context.Background()))
		require.NoError(t, c.Close())
		require.ErrorIs(t, c.Ping(context.Background()), lmx.ErrClosed)
	})
}
