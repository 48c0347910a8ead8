#include "libs/common/metrics.h"

namespace connecting::metrics {

std::shared_ptr<prometheus::Registry> Registry() {
  static auto* registry =
      new std::shared_ptr<prometheus::Registry>(std::make_shared<prometheus::Registry>());
  return *registry;
}

}  // namespace connecting::metrics
