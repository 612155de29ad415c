// Constructors of the model families (internal to models/; use create_model()).
#pragma once

#include <memory>

#include "engine/nn/module.h"

namespace polyak {
class Rng;
}

namespace polyak::models {

std::shared_ptr<nn::Module> cifar_resnet(int depth, int num_classes, Rng& rng);          // resnet_cifar.cpp
std::shared_ptr<nn::Module> kuangliu_resnet(int depth, int num_classes, Rng& rng);    // resnet.cpp (18, 34)
std::shared_ptr<nn::Module> wide_resnet(int depth, int widen, int num_classes, Rng& rng);  // wide_resnet.cpp
std::shared_ptr<nn::Module> vgg16(int num_classes, Rng& rng);                            // vgg.cpp
std::shared_ptr<nn::Module> tiny_cnn(int num_classes, Rng& rng);                         // tiny_cnn.cpp
std::shared_ptr<nn::Module> airbench94(int num_classes, Rng& rng);                       // airbench.cpp

}  // namespace polyak::models
