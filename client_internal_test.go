package lmx

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"testing"
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
