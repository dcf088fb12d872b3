package etcd_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/etcd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
)

// cost is what a client asked of etcd: its requests, and in them the
// comparisons and operations etcd carried out (those of the branches its
// transactions took), of which ranges read a range of keys, not one key.
type cost struct{ requests, ops, ranges int }

// counter counts the cost of the unary requests of a client while on.
type counter struct {
	mu sync.Mutex
	on bool
	c  cost
}

func (n *counter) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoke(ctx, method, req, reply, cc, opts...)
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.on {
		return err
	}
	n.c.requests++
	switch r := req.(type) {
	case *pb.TxnRequest:
		n.txn(r, reply.(*pb.TxnResponse))
	case *pb.RangeRequest:
		n.op(r.RangeEnd)
	case *pb.PutRequest:
		n.op(nil)
	case *pb.DeleteRangeRequest:
		n.op(r.RangeEnd)
	default:
		panic(fmt.Sprintf("a request the test does not count: %s", method))
	}
	return err
}

func (n *counter) op(rangeEnd []byte) {
	n.c.ops++
	if len(rangeEnd) > 0 {
		n.c.ranges++
	}
}

// txn counts the comparisons of r and the operations of the branch etcd
// took, nested transactions included.
func (n *counter) txn(r *pb.TxnRequest, resp *pb.TxnResponse) {
	for _, c := range r.Compare {
		n.op(c.RangeEnd)
	}
	ops := r.Success
	if !resp.Succeeded {
		ops = r.Failure
	}
	for i, op := range ops {
		switch o := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			n.op(o.RequestRange.RangeEnd)
		case *pb.RequestOp_RequestPut:
			n.op(nil)
		case *pb.RequestOp_RequestDeleteRange:
			n.op(o.RequestDeleteRange.RangeEnd)
		case *pb.RequestOp_RequestTxn:
			n.txn(o.RequestTxn, resp.Responses[i].GetResponseTxn())
		}
	}
}

// client is a client of the test's etcd whose requests n counts, closed
// with the test.
func (n *counter) client(t *testing.T) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(n.intercept)}})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	return cli
}

// measure returns the cost of one call of cycle, after a first call that
// starts what the cycle keeps (a session, a request name).
func (n *counter) measure(t *testing.T, cycle func() error) cost {
	require.NoError(t, cycle())
	n.mu.Lock()
	n.on, n.c = true, cost{}
	n.mu.Unlock()
	require.NoError(t, cycle())
	n.mu.Lock()
	defer n.mu.Unlock()
	n.on = false
	return n.c
}

// An uncontended Lock and Unlock cost etcd no more than a Lock and Unlock
// of concurrency.Mutex: as many requests, and no more comparisons,
// operations or reads of a range in them. Counts do not depend on load.
func TestUncontendedCycleCost(t *testing.T) {
	var n counter
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(n.intercept)}})
	require.NoError(t, err)
	defer cli.Close()
	ctx := t.Context()

	sess, err := concurrency.NewSession(cli)
	require.NoError(t, err)
	defer sess.Close()
	m := concurrency.NewMutex(sess, fmt.Sprintf("cost/%d/k", prefixes.Add(1)))
	mutex := n.measure(t, func() error {
		if err := m.Lock(ctx); err != nil {
			return err
		}
		return m.Unlock(ctx)
	})

	lk, err := etcd.New(ctx, cli, fmt.Sprintf("cost/%d", prefixes.Add(1)))
	require.NoError(t, err)
	defer lk.Close()
	door := n.measure(t, func() error {
		l, err := lk.Lock(ctx, "k")
		if err != nil {
			return err
		}
		return l.Unlock(ctx)
	})
	t.Logf("a cycle: concurrency.Mutex %+v, lmx %+v", mutex, door)
	assert.Equal(t, cost{requests: 2, ops: 4, ranges: 1}, mutex, "concurrency.Mutex's cycle changed: the reference is not what this test was written for")
	assert.LessOrEqual(t, door.requests, mutex.requests, "requests")
	assert.LessOrEqual(t, door.ops, mutex.ops, "comparisons and operations")
	assert.LessOrEqual(t, door.ranges, mutex.ranges, "reads of a range")
}

// A FIFO hand-off between Lockers costs the waiter's Locker what it cost
// before its key ever had a request with a Priority: once the ranked
// requests are gone, the first FIFO waiter drops the stale grant record,
// and the key is back to FIFO's reads and writes.
func TestHandoffCostAfterRanked(t *testing.T) {
	var n counter
	cli := n.client(t)
	ctx := t.Context()
	pfx := fmt.Sprintf("cost/%d", prefixes.Add(1))
	waiter, err := etcd.New(ctx, cli, pfx)
	require.NoError(t, err)
	defer waiter.Close()
	holder := openLocker(t, fmt.Sprintf("etcd://%s/%s?session_ttl=2s", endpoint, pfx))
	handoff := func(opts ...lmx.LockOption) func() error {
		return func() error {
			h, err := holder.Lock(ctx, "k")
			if err != nil {
				return err
			}
			got := make(chan error, 1)
			go func() {
				l, err := waiter.Lock(ctx, "k", opts...)
				if err == nil {
					err = l.Unlock(ctx)
				}
				got <- err
			}()
			waitWaiters(t, holder, "k", 1)
			if err := h.Unlock(ctx); err != nil {
				return err
			}
			return <-got
		}
	}
	before := n.measure(t, handoff())
	require.NoError(t, handoff(lmx.Priority(1))())
	require.NoError(t, handoff()()) // the first FIFO waiter drops the stale record
	after := n.measure(t, handoff())
	t.Logf("the waiter's side of a hand-off: before %+v, after %+v", before, after)
	assert.LessOrEqual(t, after.requests, before.requests, "requests")
	assert.LessOrEqual(t, after.ops, before.ops, "comparisons and operations")
	assert.LessOrEqual(t, after.ranges, before.ranges, "reads of a range")
}
