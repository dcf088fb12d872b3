package lmx

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A grant that dispatch took out of the calls just before the session was
// lost answers its Lock with the loss, since fail no longer can (the chaos
// harness found the client panicking here, writing the lease into the lost
// session's nil map of leases). The broker releases the grant with the
// session.
func TestGrantAfterSessionLost(t *testing.T) {
	b := NewBroker()
	defer b.Close()
	c := dialPipe(t, b)
	defer c.Close()
	c.mu.Lock()
	cc := c.conn
	c.mu.Unlock()
	cc.fail(errors.New("cut"))
	id := ulid.Make()
	p := binary.AppendUvarint(append([]byte(nil), id[:]...), 7)
	p = appendTime(p, time.Time{})
	l, lost, bad := cc.granted(&call{key: "k", lock: true}, p)
	assert.Nil(t, l)
	assert.ErrorIs(t, lost, ErrSessionLost)
	assert.NoError(t, bad)
}

// dialPipe returns a client of b over a net.Pipe, which a synctest bubble
// can hold.
func dialPipe(t *testing.T, b *Broker) *Client {
	t.Helper()
	c, err := Dial(context.Background(), "pipe:0", WithDialer(func(context.Context, string, string) (net.Conn, error) {
		c1, c2 := net.Pipe()
		b.ServeConn(c2)
		return c1, nil
	}))
	require.NoError(t, err)
	return c
}

// pipeClient returns a client over a net.Pipe, which a synctest bubble can
// hold, and the pipe's other end, where the test plays the broker. It has
// answered the client's Hello.
func pipeClient(t *testing.T) (*Client, net.Conn) {
	t.Helper()
	cn, bn := net.Pipe()
	dialed := make(chan *Client, 1)
	go func() {
		c, err := Dial(context.Background(), "pipe:0", WithDialer(func(context.Context, string, string) (net.Conn, error) {
			return cn, nil
		}))
		assert.NoError(t, err)
		dialed <- c
	}()
	peerRead(t, bn, opHello)
	peerWrite(t, bn, appendWelcome(nil, welcomeMsg{version: protocolVersion, session: ulid.Make(),
		heartbeat: time.Hour, timeout: time.Hour, maxFrame: 1 << 20, maxKeyLen: 1024}))
	c := <-dialed
	require.NotNil(t, c)
	return c, bn
}

// peerRead reads a frame from the client, which must be of op o.
func peerRead(t *testing.T, nc net.Conn, o op) header {
	t.Helper()
	var hdr [headerLen]byte
	_, err := io.ReadFull(nc, hdr[:])
	require.NoError(t, err)
	h := parseHeader(hdr[:])
	_, err = io.ReadFull(nc, make([]byte, h.length))
	require.NoError(t, err)
	require.Equal(t, o, h.op)
	return h
}

// peerWrite writes frames to the client, which must read them within a
// second.
func peerWrite(t *testing.T, nc net.Conn, frames []byte) {
	t.Helper()
	nc.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := nc.Write(frames)
	require.NoError(t, err, "the client stopped reading")
}

// The read role's holder never writes: a frame it must send in answer to
// one it reads (a Stop's answer, the Release of a grant to a Lock given up)
// goes out from another goroutine. Were the reader to write, over a
// connection without buffers it would wait for the broker to read, while
// the broker waited for it to read the broker's next frame: both stuck
// until the broker's write deadline dropped the session
// (TestClientHandOffStress failed so now and then).
func TestClientReaderNeverWrites(t *testing.T) {
	granted := func(id uint32) []byte {
		return appendGranted(nil, id, grantedMsg{id: ulid.Make(), token: 1})
	}
	t.Run("Stop", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, nc := pipeClient(t)
			defer c.Close()
			locked := make(chan error, 1)
			go func() {
				_, err := c.Lock(t.Context(), "k")
				locked <- err
			}()
			lock := peerRead(t, nc, opLock)
			synctest.Wait() // the Lock's caller reads, for the role was free
			peerWrite(t, nc, appendStop(nil, opStop, stopMsg{key: "k", seq: 1}))
			peerWrite(t, nc, granted(lock.id))
			require.NoError(t, <-locked)
			peerRead(t, nc, opStopped)
		})
	})
	t.Run("GrantGivenUp", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c, nc := pipeClient(t)
			defer c.Close()
			ctx, cancel := context.WithCancel(t.Context())
			locked := make(chan error, 1)
			go func() {
				_, err := c.Lock(ctx, "k")
				locked <- err
			}()
			lock := peerRead(t, nc, opLock)
			synctest.Wait()
			cancel()
			peerRead(t, nc, opCancel)
			require.ErrorIs(t, <-locked, context.Canceled)
			synctest.Wait() // the background reader reads, for an answer is due
			peerWrite(t, nc, granted(lock.id))
			peerWrite(t, nc, appendEmpty(nil, opPong, 0))
			peerRead(t, nc, opRelease)
		})
	})
}
