#pragma once

/// torchtp: Megatron-style tensor parallelism for LibTorch.
/// One include for the whole public API.

#include "torchtp/group.h"
#include "torchtp/init.h"
#include "torchtp/linear.h"
#include "torchtp/mappings.h"
#include "torchtp/partition.h"
#include "torchtp/work.h"
