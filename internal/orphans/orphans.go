// Package orphans holds the retry loop that the etcd and Redis backends
// share: what a Locker gave up while its server did not answer (a request
// of a cancelled Lock, a lease whose Unlock failed) stays on the server
// under a session that lives on, so the Locker keeps asking the server to
// drop it until the server answers.
package orphans

import (
	"context"
	"maps"
	"sync"
	"time"
)

// The retry's timings: how long one attempt may take, and the wait between
// rounds, which doubles from first up to most while an attempt fails.
const (
	attempt = 2 * time.Second
	first   = 50 * time.Millisecond
	most    = 2 * time.Second
)

// TakeBack calls take for each entry of *m, a map that mu guards, and
// deletes each entry that take returns nil for, unless the entry changed
// meanwhile, until *m is empty or ctx is done. Each call gets ctx with a
// 2 s deadline. The wait between rounds starts at 50 ms and doubles, up to
// 2 s, with each round in which a call failed. TakeBack decides that
// *m is empty while holding mu, so a caller that adds an entry to an
// empty map while holding mu starts TakeBack again.
func TakeBack[K, V comparable](ctx context.Context, mu sync.Locker, m *map[K]V, take func(ctx context.Context, k K, v V) error) {
	wait := first
	for {
		mu.Lock()
		todo := maps.Clone(*m)
		mu.Unlock()
		failed := false
		for k, v := range todo {
			actx, cancel := context.WithTimeout(ctx, attempt)
			err := take(actx, k, v)
			cancel()
			if err != nil {
				failed = true
				continue
			}
			mu.Lock()
			if cur, ok := (*m)[k]; ok && cur == v {
				delete(*m, k)
			}
			mu.Unlock()
		}
		mu.Lock()
		left := len(*m)
		mu.Unlock()
		if left == 0 {
			return
		}
		if failed {
			wait = min(2*wait, most)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}
