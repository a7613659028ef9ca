#pragma once
/// \file
/// Umbrella header: every public header of vitmsn.

#include "vitmsn/config.hpp"
#include "vitmsn/convert.hpp"
#include "vitmsn/cpu.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/export.hpp"
#include "vitmsn/identity.hpp"
#include "vitmsn/image.hpp"
#include "vitmsn/io.hpp"
#include "vitmsn/model.hpp"
#include "vitmsn/preprocess.hpp"
#include "vitmsn/preprocessor_config.hpp"
#include "vitmsn/probe.hpp"
#include "vitmsn/safetensors.hpp"
#include "vitmsn/synthetic.hpp"
#include "vitmsn/tensor.hpp"
#include "vitmsn/torch_checkpoint.hpp"
#include "vitmsn/version.hpp"
