package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/ztna-dev/ztna/internal/bus"
	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/internal/store/bolt"
	redisstore "github.com/ztna-dev/ztna/internal/store/redis"
	"github.com/ztna-dev/ztna/proxy"
)

// storeOpenWait bounds connecting to Redis at start.
const storeOpenWait = 15 * time.Second

// openStore opens the configured shared state and the bus the replicas
// tell each other on: bolt in the data dir and no bus (one replica), or
// Redis and its pub/sub. start begins delivering the other replicas'
// events to h; closeAll stops the bus and closes the store.
func openStore(ctx context.Context, cfg *proxy.Config, logger *slog.Logger) (st store.Store, b bus.Bus, start func(h bus.Handler), closeAll func(), err error) {
	switch cfg.Store.Backend {
	case "", proxy.StoreBolt:
		bs, err := bolt.Open(filepath.Join(dataDir(cfg), "ztna.db"), bolt.Options{Logger: logger})
		if err != nil {
			return nil, nil, nil, nil, err
		}
		return bs, bus.Local{}, func(bus.Handler) {}, func() { _ = bs.Close() }, nil
	case proxy.StoreRedis:
		redisstore.RouteClientLogs(logger) // go-redis's own lines, as JSON like ours
		octx, cancel := context.WithTimeout(ctx, storeOpenWait)
		defer cancel()
		rs, err := redisstore.Open(octx, cfg.Store.Redis, logger)
		if err != nil {
			return nil, nil, nil, nil, fmt.Errorf("store.redis: %w", err)
		}
		rb := bus.NewRedis(rs.Client(), rs.Prefix()+"events", logger)
		bctx, stopBus := context.WithCancel(context.Background())
		start = func(h bus.Handler) { rb.Start(bctx, h) }
		closeAll = func() {
			stopBus()
			_ = rb.Close()
			_ = rs.Close()
		}
		logger.Info("shared state in Redis", "addrs", cfg.Store.Redis.Addrs, "replica", rb.ID())
		return rs, rb, start, closeAll, nil
	default:
		return nil, nil, nil, nil, fmt.Errorf("store.backend %q: want bolt or redis", cfg.Store.Backend)
	}
}
