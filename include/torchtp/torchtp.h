#pragma once

/// torchtp: Megatron-style tensor parallelism for LibTorch.
/// One include for the whole public API.

#include "torchtp/causal_lm.h"
#include "torchtp/checkpoint.h"
#include "torchtp/cross_entropy.h"
#include "torchtp/data_parallel.h"
#include "torchtp/embedding.h"
#include "torchtp/failure.h"
#include "torchtp/generation.h"
#include "torchtp/gpt.h"
#include "torchtp/gpt2.h"
#include "torchtp/group.h"
#include "torchtp/init.h"
#include "torchtp/linear.h"
#include "torchtp/mappings.h"
#include "torchtp/norm.h"
#include "torchtp/partition.h"
#include "torchtp/pretrained.h"
#include "torchtp/random.h"
#include "torchtp/rotary.h"
#include "torchtp/safetensors.h"
#include "torchtp/sampling.h"
#include "torchtp/sharding.h"
#include "torchtp/tokenizer.h"
#include "torchtp/transformer.h"
#include "torchtp/work.h"
