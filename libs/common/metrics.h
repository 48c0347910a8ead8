// The process-wide Prometheus registry. Components add their own families to
// it; the server bootstrap serves it on METRICS_LISTEN at /metrics.
#ifndef CONNECTING_LIBS_COMMON_METRICS_H_
#define CONNECTING_LIBS_COMMON_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>

namespace connecting::metrics {

// Never null; lives for the whole process.
std::shared_ptr<prometheus::Registry> Registry();

}  // namespace connecting::metrics

#endif  // CONNECTING_LIBS_COMMON_METRICS_H_
