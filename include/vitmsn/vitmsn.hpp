#pragma once
/// \file
/// Umbrella header: everything a program needs to run ViT-MSN.

#include "vitmsn/config.hpp"
#include "vitmsn/cpu.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/image.hpp"
#include "vitmsn/io.hpp"
#include "vitmsn/model.hpp"
#include "vitmsn/preprocess.hpp"
#include "vitmsn/probe.hpp"
#include "vitmsn/safetensors.hpp"
#include "vitmsn/synthetic.hpp"
#include "vitmsn/tensor.hpp"
#include "vitmsn/version.hpp"
#include "vitmsn/weights.hpp"
