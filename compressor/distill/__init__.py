"""Knowledge distillation: a smaller student trained to match a teacher."""
