// Every differentiable function of fusegpt, one per op.
#pragma once

#include "autograd/functions/add.h"
#include "autograd/functions/add_rmsnorm.h"
#include "autograd/functions/attention.h"
#include "autograd/functions/cast.h"
#include "autograd/functions/cross_entropy.h"
#include "autograd/functions/embedding.h"
#include "autograd/functions/linear.h"
#include "autograd/functions/lm_head_loss.h"
#include "autograd/functions/reshape.h"
#include "autograd/functions/rmsnorm.h"
#include "autograd/functions/rmsnorm_qkv_rope.h"
#include "autograd/functions/rope.h"
#include "autograd/functions/swiglu.h"
#include "autograd/variable.h"
